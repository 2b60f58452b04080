"""The exported dataset card (README.md of the export), written from the warehouse: this run's counts next to the
published card's, the funnel of every source, the models and parameters of every stage (a partition rerun with
other settings is named, never averaged away), the eval sets decontaminated against, and the licences and
languages of the sources, from which the YAML `license` / `language` are derived. Pure: the `sft_export` asset
reads, this writes text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from iimed_assets.core import licences, report, runs
from iimed_assets.core.funnel import SECTION_ORDER, FunnelRow, final_rows, read_rows
from iimed_assets.core.markdown import markdown_table

# The stages whose settings the card lists, in graph order, with what they are (stages without a record are
# named as such: they have not run since stage records exist, or not at all).
STAGE_DESCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("qa_samples", "section 2: n responses sampled per seed prompt"),
    ("qa_verified", "section 2: each sample verified; the keep rule picks the kept ones"),
    ("r1_prompt_embeddings", "section 3: prompt embeddings"),
    ("r1_clusters", "section 3: K-means over every R1 prompt"),
    ("r1_cluster_domains", "section 3: domain vote of the prompts nearest each centroid"),
    ("r1_medical_traces", "section 3: traces of Medical/Biology clusters kept"),
    ("instruct_responses", "section 4: one response per instruction prompt"),
    ("instruct_judged", "section 4: reference-guided judge score, kept at >= threshold"),
    ("sft_deduped", "cleaning: response near-duplicate removal"),
    ("sft_decontaminated", "cleaning: eval decontamination (8-gram, then fuzzy)"),
)
# Headline numbers summed over a stage's current records, with their labels.
STAT_LABELS = (("prompt_tokens", "prompt tokens"), ("completion_tokens", "completion tokens"),
               ("requests", "requests"), ("cache_hits", "cache hits"), ("cost_usd", "cost USD"),
               ("wall_s", "wall s"))
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


@dataclass(frozen=True)
class SourceInfo:
    section: str
    name: str
    title: str
    hf_id: str | None
    licence: str                     # registry text
    declared_language: str           # registry (field map default)
    read_from: str | None = None     # sample | hub | hub-mirror | local (the source stage's record)
    stand_in: str | None = None      # what the bundled sample holds instead, when read from it


@dataclass(frozen=True)
class EvalSet:
    name: str
    title: str
    hf_id: str | None
    items: int
    removed: int


@dataclass(frozen=True)
class CardInputs:
    name: str
    build: str                                        # provenance.BuildInfo.markdown()
    by_section: Sequence[tuple[str, int, int]]        # (section, train rows, validation rows)
    files: Mapping[str, Sequence[str]]                # split -> Parquet shard paths
    funnel: Sequence[FunnelRow] = ()
    rollup: Sequence[FunnelRow] = ()
    sources: Sequence[SourceInfo] = ()
    languages: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # source -> language -> final rows
    published: report.PublishedFigures | None = None
    stages: Mapping[str, runs.StageSettings] = field(default_factory=dict)
    eval_sets: Sequence[EvalSet] = ()
    ledger: Sequence[tuple[str, str, int]] = ()       # (stage, reason, rows) of the funnel's stages
    profile: str | None = None
    funnel_png: str | None = None                     # path of the funnel plot inside the export
    stage_builds: Sequence[str] = ()                  # builds (version+commit) the current rows were made with


def size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T")


def yaml_scalar(value: str) -> str:
    """A YAML double-quoted scalar (safe for any text)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def front_matter(c: CardInputs, lic: licences.CardLicence, languages: list[str], total: int) -> list[str]:
    lines = ["---", f"pretty_name: {yaml_scalar(c.name)}", f"license: {lic.license}"]
    if lic.license_name:
        lines += [f"license_name: {lic.license_name}", f"license_link: {lic.license_link}",
                  f"license_details: {yaml_scalar(lic.summary)}"]
    if languages:
        lines += ["language:", *[f"- {lang}" for lang in languages]]
    lines += ["task_categories:", "- text-generation", "tags:", "- medical", "- reasoning", "- sft",
              "size_categories:", f"- {size_category(total)}", "configs:", "- config_name: default", "  data_files:"]
    lines += [f"  - split: {s}\n    path: {yaml_scalar('data/' + s + '-*.parquet')}" for s in c.files]
    return [*lines, "---"]


def stage_lines(c: CardInputs) -> list[str]:
    """One bullet per stage: its settings per group of partitions, its totals; reruns with other settings."""
    out = []
    for asset, what in STAGE_DESCRIPTIONS:
        st = c.stages.get(asset)
        if st is None or not st.groups:
            out.append(f"- **`{asset}`** ({what}): no stage record in this warehouse (not run)")
            continue
        n_parts = sum(len(g.partitions) for g in st.groups)
        totals = {key: sum(g.stat_total(key) for g in st.groups) for key, _ in STAT_LABELS}
        spent = ", ".join(f"{label} {totals[key]:,.2f}" if key in ("cost_usd", "wall_s") else
                          f"{label} {int(totals[key]):,}" for key, label in STAT_LABELS if totals[key])
        if not st.mixed:
            (g,) = st.groups
            scope = "unpartitioned" if g.partitions == (runs.ALL,) else f"{n_parts} partitions"
            out.append(f"- **`{asset}`** ({what}; {scope}): {runs.settings_line(g.params)}"
                       + (f" — {spent}" if spent else ""))
        else:
            keys = st.differing_keys()
            out.append(f"- **`{asset}`** ({what}): ⚠ **partitions of this table were produced with different "
                       f"settings** (they differ in {', '.join(f'`{k}`' for k in keys)}); common settings: "
                       + runs.settings_line({k: v for k, v in st.groups[0].params.items() if k not in keys})
                       + (f" — {spent}" if spent else ""))
            for g in st.groups:
                out.append(f"  - {runs.settings_line(g.params, keys)} (settings `{g.settings_hash}`): "
                           + ", ".join(f"`{p}`" for p in g.partitions))
        for s in st.superseded:
            keys = sorted({k for k in {**s.earlier.params, **s.current.params}
                           if runs.canonical_json(s.earlier.params.get(k)) != runs.canonical_json(s.current.params.get(k))})
            when = f" on {s.earlier.recorded_at:%Y-%m-%d %H:%M}" if s.earlier.recorded_at else ""
            out.append(f"  - ⟳ `{asset}[{s.partition}]` was rerun with other settings: now "
                       f"{runs.settings_line(s.current.params, keys)} (settings `{s.current.settings_hash}`), "
                       f"replacing {runs.settings_line(s.earlier.params, keys)} (settings `{s.earlier.settings_hash}`, "
                       f"run `{(s.earlier.run_id or '?')[:8]}`{when})")
    return out


def licence_rows(c: CardInputs, final: Mapping[str, int]) -> list[tuple]:
    rows = []
    # the sources whose rows are in the set first (their terms apply), each group most restrictive first
    for s in sorted(c.sources, key=lambda s: (final.get(s.name, 0) == 0, licences.classify(s.licence).rank,
                                              s.section, s.name)):
        lic = licences.classify(s.licence)
        langs = c.languages.get(s.name, {})
        rows.append((f"`{s.name}`", s.hf_id or "—", s.licence, lic.hub_id or "—", lic.restriction,
                     f"{final.get(s.name, 0):,}", ", ".join(f"{k} {v:,}" for k, v in langs.items()) or "—",
                     s.declared_language, s.read_from or "—"))
    return rows


def dataset_card(c: CardInputs) -> str:
    """The card: Hub front matter (derived licence and languages, one data_files entry per split), then the run
    next to the published card, the funnel, the models and parameters, decontamination, licences, files."""
    total = sum(t + v for _, t, v in c.by_section)
    final_by_key = final_rows(c.funnel)
    final_by_source = {src: n for (_, src), n in final_by_key.items()}
    contributing = [(s.name, s.licence) for s in c.sources if final_by_source.get(s.name, 0) > 0]
    lic = licences.card_licence(contributing)
    langs = licences.languages_present(
        [(lang, n) for per in c.languages.values() for lang, n in per.items()])
    sample_sources = [s for s in c.sources if s.read_from == "sample"]
    lines = front_matter(c, lic, langs, total) + [
        "",
        f"# {c.name}",
        "",
        f"{total:,} chat samples (`messages`: user turn(s), then an assistant turn with `<think>` reasoning where there "
        f"is reasoning), rebuilt with {c.build} from the public sources of the II-Medical-Reasoning-SFT recipe"
        + (f", profile `{c.profile}`" if c.profile else "") + ". Every number below was read from the run's warehouse "
        "when this card was written."
        + (f" The stages that made the current rows ran with build{'s' if len(c.stage_builds) > 1 else ''} "
           + ", ".join(f"`{b}`" for b in c.stage_builds) + "." if c.stage_builds else ""),
        "",
    ]
    if sample_sources:
        lines += [f"> **Offline sample.** {len(sample_sources)} of {len(c.sources)} sources were read from the bundled "
                  "sample: small real sets standing in for the named hub sources (the table under *Licences* says "
                  "which). This run shows the recipe working end to end; its sizes are not comparable with the "
                  "published ones.", ""]
    lines += ["## This run next to the published card", ""]
    if c.published is not None:
        sources = [(s.section, s.name) for s in c.sources]
        lines += [markdown_table(*report.published_vs_run_sections(final_by_key, c.published)), "",
                  markdown_table(*report.published_vs_run_sources(sources, final_by_key, read_rows(c.funnel),
                                                                  c.published)), "",
                  f"Published figures: {c.published.citation}. The card counts sections 2 and 4 and the total; "
                  "sections 1 and 3 are compared together with its remainder. Per source it gives section 4's "
                  "prompt counts (they add up to its section total).", ""]
    lines += ["## Counts", "", markdown_table(["section", "train", "validation"], list(c.by_section)), ""]
    lines += ["## Where each source's rows went", ""]
    if c.funnel_png:
        lines += [f"![where each source's rows went]({c.funnel_png})", ""]
    lines += ["Rows out of every stage of each source's path (prompts for the section-2 stages; ⚠ marks rows a stage "
              "read but neither passed on nor ledgered: a stage older than its input), the share of what the source "
              "read that reached the final set, and every drop by stage and ledger reason.", ""]
    for section in SECTION_ORDER:
        headers, body = report.funnel_table(c.funnel, section)
        lines += [f"### {report.SECTION_TITLES[section]}", "", markdown_table(headers, body, 400), ""]
    zero = report.ended_at_zero(c.funnel)
    if zero:
        lines += ["Sources with no row in the final set:", "",
                  markdown_table(["section", "source", "read", "where its rows went"], zero, 300), ""]
    lines += ["## Models and parameters", "",
              "What produced the rows, as each stage recorded it (`stage_runs`). A table whose partitions were made "
              "with different settings lists each group; a partition rerun with other settings names both.", "",
              *stage_lines(c), ""]
    lines += ["## Decontamination", "",
              markdown_table(["eval set", "hub", "items", "rows removed as matching it"],
                             [(f"`{e.name}` ({e.title})", e.hf_id or "—", f"{e.items:,}", f"{e.removed:,}")
                              for e in c.eval_sets]) if c.eval_sets else "_no eval set was loaded_", ""]
    lines += ["## Licences and languages", "", f"**Terms:** {lic.summary}.", "",
              "The set keeps every row's source terms; the YAML `license` is "
              + (f"`{lic.license}` because every contributing source has it." if lic.license not in ("other", "unknown")
                 else "`other` (with this table as its link) because the contributing sources' terms differ and no "
                      "single identifier states them." if lic.license == "other" else "`unknown`: no source "
                      "contributed rows.")
              + " Generated responses (sections 2 and 4) also carry the terms of the model that wrote them (see "
                "*Models and parameters*). `language` lists the languages of the final rows.", "",
              markdown_table(["source", "hub", "licence (registry)", "identifier", "terms", "final rows",
                              "languages in the rows", "declared", "read from"], licence_rows(c, final_by_source), 300),
              ""]
    if sample_sources:
        lines += ["Stand-ins read from the bundled sample (the licences above are those of the hub sources they stand "
                  "in for; each bundled file's own origin and licence is in `iimed_assets/sources/sample/*/SOURCE.md` "
                  "of the project):", "",
                  markdown_table(["source", "stand-in"], [(f"`{s.name}`", s.stand_in or "—") for s in sample_sources],
                                 300), ""]
    lines += ["## Row ledger (rows not passed on, by stage and reason)", "",
              markdown_table(["stage", "reason", "rows"], [(a, r, f"{n:,}") for a, r, n in c.ledger]), ""]
    lines += ["## Files", "", *[f"- `{f}`" for fs in c.files.values() for f in fs],
              *[f"- `{s}.jsonl`" for s in c.files], *([f"- `{c.funnel_png}`"] if c.funnel_png else []), ""]
    return "\n".join(lines)
