"""What a run says about itself next to the published card: published-vs-run tables (per section, per source,
with the ratio), the funnel per source, and the stage settings. Pure: tables come out as (headers, rows), and
`text_table` / `markdown_table` render them for the terminal (`iimed-assets report`) and the dataset card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from iimed_assets.core.funnel import FINAL, SECTION_ORDER, FunnelRow, stages_of
from iimed_assets.core.schema import INSTRUCT, PUBLIC_REASONING, QA_SEED, R1_TRACES

Table = tuple[list[str], list[tuple]]

SECTION_TITLES = {
    PUBLIC_REASONING: "1. public medical reasoning",
    QA_SEED: "2. synthetic QA (rejection sampling)",
    R1_TRACES: "3. curated R1 traces",
    INSTRUCT: "4. medical instruction following",
}
# Short column names for the wide funnel tables.
STAGE_LABELS = {
    "public_reasoning_rows": "source", "qa_seed_rows": "source", "r1_trace_rows": "source",
    "instruct_prompt_rows": "source", "qa_samples": "sampled", "qa_verified": "verified",
    "r1_prompt_embeddings": "embedded", "r1_clusters": "clustered", "r1_medical_traces": "medical",
    "instruct_responses": "answered", "instruct_judged": "judged", "sft_candidates": "candidates",
    "sft_deduped": "deduped", "sft_decontaminated": "decontam.", "sft_final": "final",
}


def ratio(run: int, published: int | None) -> str:
    """this run / published, as a percentage with 3 significant digits ("—" when nothing is published)."""
    if not published:
        return "—"
    pct = 100 * run / published
    if pct == 0 or pct >= 0.01:
        return f"{pct:.3g}%"
    return f"{pct:.{2 - math.floor(math.log10(pct))}f}%"  # 3 significant digits, never in e-notation


def num(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


@dataclass(frozen=True)
class PublishedFigures:
    """The card's figures (from the registry): the total, the sections it counts, per-source counts."""

    total: int
    sections: Mapping[str, int | None]
    sections_1_and_3: int
    by_source: Mapping[str, int | None]
    citation: str


def published_vs_run_sections(final: Mapping[tuple[str, str], int], pub: PublishedFigures) -> Table:
    """Per section: the card's count, this run's final rows, the ratio. The card counts sections 2 and 4 only,
    so sections 1 and 3 are also compared together with the card's remainder."""
    by_section = {s: 0 for s in SECTION_ORDER}
    for (section, _), n in final.items():
        by_section[section] = by_section.get(section, 0) + n
    rows: list[tuple] = []
    for s in SECTION_ORDER:
        p = pub.sections.get(s)
        rows.append((SECTION_TITLES.get(s, s), num(p) if p else "not published", num(by_section[s]),
                     ratio(by_section[s], p)))
    both = by_section[PUBLIC_REASONING] + by_section[R1_TRACES]
    rows.append(("1 + 3 together (the card's remainder)", num(pub.sections_1_and_3), num(both),
                 ratio(both, pub.sections_1_and_3)))
    total = sum(by_section.values())
    rows.append(("**total**", num(pub.total), num(total), ratio(total, pub.total)))
    return ["section", "published", "this run", "ratio"], rows


def published_vs_run_sources(sources: Sequence[tuple[str, str]], final: Mapping[tuple[str, str], int],
                             read: Mapping[tuple[str, str], int], pub: PublishedFigures) -> Table:
    """Per source: rows read, final rows, the card's figure where it gives one, and the ratio final/published."""
    rows = []
    for section, source in sources:
        p = pub.by_source.get(source)
        f = final.get((section, source), 0)
        rows.append((section, source, num(read.get((section, source), 0)), num(f), num(p), ratio(f, p)))
    return ["section", "source", "read", "final (this run)", "published", "ratio"], rows


def funnel_table(rows: Sequence[FunnelRow], section: str) -> Table:
    """One section's sources, one row each: rows out of every stage of its path (in the stage's unit), the share
    of what it read that reached the final set, and its drops by stage and reason."""
    stages = [s.asset for s in stages_of(section)]
    headers = ["source", "read"] + [STAGE_LABELS.get(s, s) for s in stages[1:]]
    headers += ["final/read", "dropped (stage: reason rows)"]
    by_source: dict[str, dict[str, FunnelRow]] = {}
    for r in rows:
        if r.section == section:
            by_source.setdefault(r.source, {})[r.stage] = r
    out = []
    for source, path in sorted(by_source.items()):
        read = path[stages[0]].rows_in
        cells: list[Any] = [source, f"{read:,}"]
        for s in stages[1:]:
            r = path[s]
            cell = f"{r.rows_out:,}" if r.materialized else "not run"
            if r.unit != "rows" and r.rows_written != r.rows_out:
                cell += f" ({r.rows_written:,} rows)"
            if r.unaccounted and r.materialized:
                cell += f" ⚠{r.unaccounted:+,}"
            cells.append(cell)
        final = path[FINAL].rows_written
        cells.append(f"{100 * final / read:.3g}%" if read else "—")
        drops = [f"{STAGE_LABELS.get(s, s)}: " + ", ".join(f"{k} {v:,}" for k, v in path[s].dropped_by_reason.items())
                 for s in stages if path[s].dropped]
        cells.append("; ".join(drops) or "—")
        out.append(tuple(cells))
    return headers, out


def section_rollup_table(rollup: Sequence[FunnelRow]) -> Table:
    rows = [(SECTION_TITLES.get(r.section, r.section), r.stage, r.unit, f"{r.rows_in:,}", f"{r.rows_out:,}",
             f"{r.dropped:,}", ", ".join(f"{k} {v:,}" for k, v in list(r.dropped_by_reason.items())[:4]) or "—",
             f"{r.unaccounted:,}" if r.materialized else "not run")
            for r in rollup]
    return ["section", "stage", "unit", "in", "out", "dropped", "top reasons", "unaccounted"], rows


def ended_at_zero(rows: Sequence[FunnelRow]) -> list[tuple[str, str, int, str]]:
    """(section, source, rows read, where its last rows went) of every source with 0 final rows."""
    out = []
    by_source: dict[tuple[str, str], list[FunnelRow]] = {}
    for r in rows:
        by_source.setdefault((r.section, r.source), []).append(r)
    for (section, source), path in sorted(by_source.items()):
        path.sort(key=lambda r: r.step)
        if path[-1].rows_written:
            continue
        read = path[0].rows_in
        emptied = next((r for r in path if r.materialized and r.rows_in > 0 and r.rows_out == 0), None)
        not_run = next((r for r in path if not r.materialized), None)
        if not read:
            where = "read no rows"
        elif emptied is not None:
            why = ", ".join(f"{k} {v:,}" for k, v in emptied.dropped_by_reason.items())
            if emptied.unaccounted:
                why += (", " if why else "") + f"{emptied.unaccounted:,} unaccounted"
            where = f"{emptied.stage}: {why or 'nothing passed on'}"
        elif not_run is not None:
            where = f"{not_run.stage} has not run"
        else:
            where = "—"
        out.append((section, source, read, where))
    return out


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """A plain aligned table for the terminal: numbers right-aligned, long cells clipped."""
    def cell(v: Any) -> str:
        s = " ".join(("" if v is None else str(v)).replace("**", "").split())
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    head = [cell(h) for h in headers]
    widths = [max([len(head[i])] + [len(r[i]) for r in body]) for i in range(len(head))]

    def numeric(s: str) -> bool:
        t = s.replace(",", "").replace("%", "").replace(".", "").replace("—", "").strip()
        return bool(t) and t.lstrip("+-").isdigit()

    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for r in body:
        lines.append("  ".join(c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
