"""The exported dataset card (README.md of the export): written from counts read from the warehouse and the
parameters each cleaning stage recorded when it ran. Pure: the `sft_export` asset reads, this writes text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from iimed_assets.core.markdown import markdown_table


@dataclass(frozen=True)
class CardInputs:
    name: str
    by_section: Sequence[tuple[str, int, int]]       # (section, train rows, validation rows)
    by_source: Sequence[tuple[str, str, int]]        # (section, source, rows)
    ledger: Sequence[tuple[str, str, int]]           # (stage, reason, rows)
    files: Mapping[str, Sequence[str]]               # split -> Parquet shard paths
    dedup_params: Mapping = field(default_factory=dict)     # stage_runs of sft_deduped
    dedup_stats: Mapping = field(default_factory=dict)
    decontam_params: Mapping = field(default_factory=dict)  # stage_runs of sft_decontaminated
    decontam_stats: Mapping = field(default_factory=dict)


def dataset_card(c: CardInputs) -> str:
    """The card: Hugging Face front matter (one data_files entry per split), counts, the recipe with the
    parameters actually used, the row ledger and the file list."""
    total = sum(t + v for _, t, v in c.by_section)
    lsh, dedup_md, params, decon_md = c.dedup_params, c.dedup_stats, c.decontam_params, c.decontam_stats
    config_lines = "\n".join(f"  - split: {s}\n    path: \"{'data/' + s}-*.parquet\"" for s in c.files)
    lines = [
        "---",
        "license: other",
        "task_categories: [text-generation]",
        "language: [en, zh]",
        "tags: [medical, reasoning, sft]",
        "configs:",
        "- config_name: default",
        "  data_files:",
        config_lines,
        "---",
        "",
        f"# {c.name}",
        "",
        f"{total:,} chat samples (`messages`: user turn(s), then an assistant turn with `<think>` reasoning where "
        "there is reasoning), built by [iimed_assets](https://github.com/) from the public sources of the "
        "II-Medical-Reasoning-SFT recipe. Every count below was read from the warehouse when this card was written.",
        "",
        "## Counts",
        "",
        markdown_table(["section", "train", "validation"], list(c.by_section)),
        "",
        markdown_table(["section", "source", "rows"], list(c.by_source)),
        "",
        "## Recipe (parameters actually used)",
        "",
        "1. Sections: public medical reasoning sets as they are; rejection-sampled QA (n samples per seed, the "
        "shortest verified-correct response kept); R1 traces in medical/biology clusters; judged instructions "
        "(score >= threshold).",
        f"2. Response dedup: word {lsh.get('ngram', '?')}-gram shingles, exact Jaccard >= {lsh.get('threshold', '?')} "
        f"against an earlier kept response; MinHash {lsh.get('num_perm', '?')} permutations, LSH "
        f"{lsh.get('bands', '?')} bands × {lsh.get('rows_per_band', '?')} rows. Removed "
        f"{dedup_md.get('dropped', '?')} of {dedup_md.get('rows_in', '?')}.",
        f"3. Decontamination against {decon_md.get('eval_items', '?')} eval items: word {params.get('ngram', '?')}-gram "
        f"overlap (NFKC, casefold, punctuation ignored; n-grams in more than {params.get('max_item_df', '?')} eval "
        f"items ignored; at least {params.get('min_shared', '?')} shared with one item), then rapidfuzz ratio >= "
        f"{params.get('fuzzy_threshold', '?')}. Removed: {json.dumps(decon_md.get('removed_by_step', {}))}.",
        "",
        "## Row ledger (rows not passed on, by stage and reason)",
        "",
        markdown_table(["stage", "reason", "rows"], list(c.ledger)),
        "",
        "## Files",
        "",
        *[f"- `{f}`" for fs in c.files.values() for f in fs],
        *[f"- `{s}.jsonl`" for s in c.files],
        "",
    ]
    return "\n".join(lines)
