"""The source funnel: every source followed through every stage of its section and the cleaning stages, from
its source table to `sft_final` — rows in, rows out, rows dropped by each ledger reason. Pure: the stages'
counts come in (read from the stage tables and `row_ledger` by the `source_funnel` asset), rows go out.

A stage counts in its own unit: rows, or prompts for the section-2 stages (`qa_samples` holds n samples per
prompt and `qa_verified` may keep more than one; their ledgers hold prompts). `rows_in` is what the stage read,
in its unit: the input stage's `rows_out` when both count the same unit, else the input's `rows_written`.
For every stage and source, rows_in = rows_out + dropped + unaccounted, and unaccounted is 0 unless an upstream
partition was rerun after the stage ran (a stale stage), or the stage has not run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from iimed_assets.core.schema import INSTRUCT, PUBLIC_REASONING, QA_SEED, R1_TRACES

ROWS, PROMPTS = "rows", "prompts"
UNATTRIBUTED = "(unattributed)"  # ledger rows whose row id is in none of the tables a stage reads


@dataclass(frozen=True)
class Stage:
    """A stage as the funnel sees it: its ledger rows are under `asset`, its output is `table`."""

    asset: str
    input: str | None = None           # the stage it reads (None: a source stage, rows_in = rows read)
    unit: str = ROWS                   # ROWS, or PROMPTS (count distinct `key` values)
    key: str = "id"
    ledger_join: tuple[str, ...] = ()  # () : ledger partition = source; else tables to find a row id's source in
    ledgered: bool = True              # False: the stage never ledgers (its drops cannot happen)

    @property
    def table(self) -> str:
        return self.asset


SECTION_STAGES: dict[str, tuple[Stage, ...]] = {
    PUBLIC_REASONING: (Stage("public_reasoning_rows"),),
    QA_SEED: (Stage("qa_seed_rows"),
              Stage("qa_samples", "qa_seed_rows", PROMPTS, "prompt_id"),
              Stage("qa_verified", "qa_samples", PROMPTS, "prompt_id")),
    R1_TRACES: (Stage("r1_trace_rows"),
                Stage("r1_prompt_embeddings", "r1_trace_rows", ledgered=False),
                Stage("r1_clusters", "r1_prompt_embeddings", ledgered=False),
                # reads every trace (a trace without a cluster is ledgered `not_clustered`), not r1_clusters
                Stage("r1_medical_traces", "r1_trace_rows", ledger_join=("r1_trace_rows",))),
    INSTRUCT: (Stage("instruct_prompt_rows"),
               Stage("instruct_responses", "instruct_prompt_rows"),
               Stage("instruct_judged", "instruct_responses")),
}
SECTION_ORDER = (PUBLIC_REASONING, QA_SEED, R1_TRACES, INSTRUCT)
SECTION_OUTPUT = {s: stages[-1].asset for s, stages in SECTION_STAGES.items()}
CLEANING_STAGES: tuple[Stage, ...] = (
    # input: the section's output table (per section)
    Stage("sft_candidates", None, ledger_join=tuple(SECTION_OUTPUT[s] for s in SECTION_ORDER)),
    Stage("sft_deduped", "sft_candidates", ledger_join=("sft_candidates",)),
    Stage("sft_decontaminated", "sft_deduped", ledger_join=("sft_candidates",)),
    Stage("sft_final", "sft_decontaminated", ledgered=False),
)
FINAL = "sft_final"


def stages_of(section: str) -> tuple[Stage, ...]:
    """A section's path from its source table to `sft_final`."""
    return SECTION_STAGES[section] + CLEANING_STAGES


def input_of(section: str, stage: Stage) -> str | None:
    if stage.asset == "sft_candidates":
        return SECTION_OUTPUT[section]
    return stage.input


@dataclass(frozen=True)
class StageCounts:
    """What the warehouse holds for one stage, per source."""

    materialized: bool
    rows_out: Mapping[str, int] = field(default_factory=dict)       # in the stage's unit
    rows_written: Mapping[str, int] = field(default_factory=dict)   # rows in the table
    dropped: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # source -> reason -> rows
    table_rows: int = 0            # count(*) of the whole table
    ledger_rows: int = 0           # every ledger row of the stage


@dataclass(frozen=True)
class FunnelRow:
    section: str
    source: str
    step: int
    stage: str
    unit: str
    rows_in: int
    rows_out: int
    rows_written: int
    dropped: int
    dropped_by_reason: Mapping[str, int]
    unaccounted: int
    materialized: bool

    def as_record(self) -> dict:
        return {"section": self.section, "source": self.source, "step": self.step, "stage": self.stage,
                "unit": self.unit, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rows_written": self.rows_written, "dropped": self.dropped,
                "dropped_by_reason": dict(self.dropped_by_reason), "unaccounted": self.unaccounted,
                "materialized": self.materialized}


def build_funnel(sources: Sequence[tuple[str, str]], counts: Mapping[str, StageCounts]) -> list[FunnelRow]:
    """One row per (source, stage) of its section's path, for every (section, source) in `sources` — a source
    with no rows anywhere gets its rows of zeros, so a source that ends at 0 is visible."""
    rows: list[FunnelRow] = []
    for section, source in sources:
        out_by_stage: dict[str, FunnelRow] = {}
        for step, stage in enumerate(stages_of(section)):
            c = counts.get(stage.asset) or StageCounts(materialized=False)
            reasons = dict(sorted(c.dropped.get(source, {}).items(), key=lambda kv: (-kv[1], kv[0])))
            dropped = sum(reasons.values())
            out = int(c.rows_out.get(source, 0))
            written = int(c.rows_written.get(source, 0))
            src = input_of(section, stage)
            if src is None:
                rows_in = out + dropped  # a source stage: what was read
            else:
                prev = out_by_stage[src]  # a stage's input comes before it on the path
                # an input that has not run passes on what it would have read (its own rows_in)
                rows_in = (prev.rows_in if not prev.materialized else
                           prev.rows_out if prev.unit == stage.unit else prev.rows_written)
            row = FunnelRow(section, source, step, stage.asset, stage.unit, rows_in, out, written, dropped, reasons,
                            rows_in - out - dropped, c.materialized)
            out_by_stage[stage.asset] = row
            rows.append(row)
    return rows


def section_rollup(rows: Iterable[FunnelRow]) -> list[FunnelRow]:
    """The funnel summed over the sources of each section (source = '*')."""
    acc: dict[tuple[str, int, str], dict] = {}
    for r in rows:
        a = acc.setdefault((r.section, r.step, r.stage), {"unit": r.unit, "in": 0, "out": 0, "written": 0,
                                                          "dropped": 0, "reasons": defaultdict(int),
                                                          "unaccounted": 0, "materialized": r.materialized})
        a["in"] += r.rows_in
        a["out"] += r.rows_out
        a["written"] += r.rows_written
        a["dropped"] += r.dropped
        a["unaccounted"] += r.unaccounted
        for k, v in r.dropped_by_reason.items():
            a["reasons"][k] += v
    order = {s: i for i, s in enumerate(SECTION_ORDER)}
    out = []
    for (section, step, stage), a in sorted(acc.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        reasons = dict(sorted(a["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(FunnelRow(section, "*", step, stage, a["unit"], a["in"], a["out"], a["written"], a["dropped"],
                             reasons, a["unaccounted"], a["materialized"]))
    return out


def unaccounted(rows: Iterable[FunnelRow]) -> list[FunnelRow]:
    """Materialized (source, stage) pairs whose rows_in != rows_out + dropped (a stale stage)."""
    return [r for r in rows if r.materialized and r.unaccounted != 0]


def final_rows(rows: Iterable[FunnelRow]) -> dict[tuple[str, str], int]:
    """(section, source) -> rows in sft_final."""
    return {(r.section, r.source): r.rows_written for r in rows if r.stage == FINAL}


def read_rows(rows: Iterable[FunnelRow]) -> dict[tuple[str, str], int]:
    """(section, source) -> rows read by its source stage."""
    return {(r.section, r.source): r.rows_in for r in rows if r.step == 0}


def where_rows_went(rows: Sequence[FunnelRow]) -> dict[tuple[str, str], dict[str, float]]:
    """Per source, the share of what it read that ended in each place: `dropped at <stage>`, `unaccounted at
    <stage>`, `final`. Shares multiply along the path (a stage drops a share of what reached it), so they sum to
    1 even where a stage changes unit (prompts -> samples -> rows)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    by_source: dict[tuple[str, str], list[FunnelRow]] = defaultdict(list)
    for r in rows:
        by_source[(r.section, r.source)].append(r)
    for key, path in by_source.items():
        alive = 1.0
        shares: dict[str, float] = {}
        if not path or path[0].rows_in == 0:
            out[key] = {}
            continue
        path = sorted(path, key=lambda r: r.step)
        last_run = max((r.step for r in path if r.materialized), default=-1)
        for r in path:
            if not r.materialized:
                if r.step < last_run:
                    continue  # a stage that has not run, but later ones have: its rows went on without it
                shares[f"not run: {r.stage}"] = alive
                alive = 0.0
                break
            if r.rows_in <= 0:
                break
            if r.dropped:
                shares[f"dropped at {r.stage}"] = alive * r.dropped / r.rows_in
            if r.unaccounted:
                shares[f"unaccounted at {r.stage}"] = alive * r.unaccounted / r.rows_in
            alive *= max(r.rows_in - r.dropped - r.unaccounted, 0) / r.rows_in
        if alive > 0:
            shares["final"] = alive
        out[key] = shares
    return out


def funnel_plot_png(rows: Sequence[FunnelRow], title: str = "where each source's rows went") -> bytes:
    """A horizontal stacked bar per source (grouped by section): the share of the rows it read that each stage
    dropped and the share in the final set, labelled `read -> final`. Sources that read nothing or ended at 0
    keep their bar (empty, or with no `final` part)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = where_rows_went(rows)
    reads, finals = read_rows(rows), final_rows(rows)
    keys = sorted(shares, key=lambda k: (SECTION_ORDER.index(k[0]) if k[0] in SECTION_ORDER else 99, k[1]))
    segments: list[str] = []
    for k in keys:
        for name in shares[k]:
            if name not in segments and name != "final":
                segments.append(name)
    stage_order = {s.asset: i for sec in SECTION_ORDER for i, s in enumerate(stages_of(sec))}
    segments.sort(key=lambda n: (stage_order.get(n.split(" ")[-1], 99), n))
    segments.append("final")
    # tab20 without its two greens: green is the final set's colour alone
    palette = [plt.get_cmap("tab20")(i) for i in range(20) if i not in (4, 5)]
    colours = {name: ("#2ca02c" if name == "final" else palette[i % len(palette)]) for i, name in enumerate(segments)}
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(keys) + 1.8), dpi=100)
    y = list(range(len(keys)))[::-1]
    for name in segments:
        left = [sum(shares[k].get(n, 0.0) for n in segments[:segments.index(name)]) for k in keys]
        width = [shares[k].get(name, 0.0) for k in keys]
        if any(width):
            ax.barh(y, width, left=left, color=colours[name], label=name, height=0.7)
    for yi, k in zip(y, keys):
        ax.text(1.01, yi, f"{reads.get(k, 0):,} → {finals.get(k, 0):,}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{k[1]} ({k[0]})" for k in keys], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the rows the source read (label: read → final)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.13, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
