"""`source_funnel`: every source followed from its source table to `sft_final` (rows in, rows out, rows dropped by
each ledger reason), built from the stage tables and `row_ledger`, with a section roll-up (`section_funnel`)
and a plot of where each source's rows went. The algorithm is `core.funnel`; this module reads the counts."""

import base64
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from iimed_assets.assets.common import markdown_table, swap_checked
from iimed_assets.core import funnel, report
from iimed_assets.core.schema import check_identifier
from iimed_assets.resources.warehouse import LEDGER_TABLE, Select, Staged, Swap, Warehouse
from iimed_assets.sources.registry import SOURCES

FUNNEL_MATCHES_TABLES = "funnel_matches_tables"
FUNNEL_ROWS_ACCOUNTED = "funnel_rows_accounted"
SECTION_FUNNEL = "section_funnel"

FUNNEL_SCHEMA = pa.schema([
    ("section", pa.string()), ("source", pa.string()), ("step", pa.int32()), ("stage", pa.string()),
    ("unit", pa.string()), ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("rows_written", pa.int64()),
    ("dropped", pa.int64()), ("dropped_by_reason", pa.map_(pa.string(), pa.int64())),
    ("unaccounted", pa.int64()), ("materialized", pa.bool_()),
])
COLUMNS = [
    dg.TableColumn("section", "VARCHAR", description="recipe section of the source"),
    dg.TableColumn("source", "VARCHAR", description="registry source ('*' in section_funnel: all of the section)"),
    dg.TableColumn("step", "INTEGER", description="position on the section's path (0 = the source table)"),
    dg.TableColumn("stage", "VARCHAR", description="the stage (asset) and its table"),
    dg.TableColumn("unit", "VARCHAR", description="rows, or prompts (qa_samples, qa_verified)"),
    dg.TableColumn("rows_in", "BIGINT", description="what the stage read, in its unit (source stage: rows read)"),
    dg.TableColumn("rows_out", "BIGINT", description="what it passed on, in its unit"),
    dg.TableColumn("rows_written", "BIGINT", description="rows in its table (qa_samples: n per prompt)"),
    dg.TableColumn("dropped", "BIGINT", description="its ledger rows for the source"),
    dg.TableColumn("dropped_by_reason", "MAP(VARCHAR, BIGINT)", description="ledger reason -> rows"),
    dg.TableColumn("unaccounted", "BIGINT", description="rows_in - rows_out - dropped (0 unless a stage is stale)"),
    dg.TableColumn("materialized", "BOOLEAN", description="the stage's table exists"),
]


def funnel_sources(warehouse: Warehouse) -> list[tuple[str, str]]:
    """(section, source) of every registry source of the four sections, plus any other source found in a source
    table (rows written under a name the registry does not know are followed too)."""
    known = [(s.section, s.name) for s in SOURCES if s.section in funnel.SECTION_STAGES]
    extra: set[tuple[str, str]] = set()
    for section, stages in funnel.SECTION_STAGES.items():
        table = stages[0].table
        if warehouse.table_exists(table):
            extra |= {(section, src) for (src,) in warehouse.fetch(f"SELECT DISTINCT source FROM {table}")}
    order = {s: i for i, s in enumerate(funnel.SECTION_ORDER)}
    return sorted(set(known) | extra, key=lambda k: (order[k[0]], k[1]))


def _columns(warehouse: Warehouse, table: str) -> set[str]:
    return {c for (c,) in warehouse.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                          [table])}


def read_stage_counts(warehouse: Warehouse) -> dict[str, funnel.StageCounts]:
    """Per stage: rows out / written by source, ledger rows by source and reason (a cleaning stage's ledger rows
    are attributed by joining their row id to the tables the stage read), the table's and the ledger's totals."""
    stages = {s.asset: s for section in funnel.SECTION_ORDER for s in funnel.stages_of(section)}
    have_ledger = warehouse.table_exists(LEDGER_TABLE)
    out: dict[str, funnel.StageCounts] = {}
    for name, stage in stages.items():
        table = check_identifier(stage.table)
        if not warehouse.table_exists(table):
            out[name] = funnel.StageCounts(materialized=False)
            continue
        key = stage.key if stage.key in _columns(warehouse, table) else "id"
        counted = warehouse.fetch(f"SELECT source, count(DISTINCT {check_identifier(key)}), count(*) FROM {table} "
                                  "GROUP BY 1")
        dropped: dict[str, dict[str, int]] = {}
        ledger_rows = 0
        if have_ledger:
            ledger_rows = warehouse.fetch_one(f"SELECT count(*) FROM {LEDGER_TABLE} WHERE asset = ?", [name])[0]
            for source, reason, n in _ledger_by_source(warehouse, stage):
                dropped.setdefault(source, {})[reason] = n
        out[name] = funnel.StageCounts(
            materialized=True, rows_out={s: int(o) for s, o, _ in counted}, rows_written={s: int(w) for s, _, w in counted},
            dropped=dropped, table_rows=sum(int(w) for _, _, w in counted), ledger_rows=int(ledger_rows))
    return out


def _ledger_by_source(warehouse: Warehouse, stage: funnel.Stage) -> list[tuple[str, str, int]]:
    if not stage.ledger_join:
        return warehouse.fetch(f"SELECT partition, reason, count(*) FROM {LEDGER_TABLE} WHERE asset = ? GROUP BY ALL",
                               [stage.asset])
    tables = [check_identifier(t) for t in stage.ledger_join if warehouse.table_exists(t)]
    ids = " UNION ".join(f"SELECT DISTINCT id, source FROM {t}" for t in tables) or \
        "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS source WHERE false"
    return warehouse.fetch(f"SELECT coalesce(s.source, ?), l.reason, count(*) FROM {LEDGER_TABLE} l LEFT JOIN "
                           f"({ids}) s ON s.id = l.row_id WHERE l.asset = ? GROUP BY ALL",
                           [funnel.UNATTRIBUTED, stage.asset])


def current_funnel(warehouse: Warehouse) -> tuple[list[funnel.FunnelRow], dict[str, funnel.StageCounts]]:
    """The funnel of the warehouse as it is now (what `source_funnel` stages and `iimed-assets report` prints)."""
    counts = read_stage_counts(warehouse)
    return funnel.build_funnel(funnel_sources(warehouse), counts), counts


def stored_funnel(warehouse: Warehouse, table: str = "source_funnel") -> list[funnel.FunnelRow]:
    """The rows of a funnel table (`source_funnel`, `section_funnel` or a staged copy)."""
    rows = warehouse.fetch(f"SELECT section, source, step, stage, unit, rows_in, rows_out, rows_written, dropped, "
                           f"dropped_by_reason, unaccounted, materialized FROM {check_identifier(table)} "
                           "ORDER BY section, source, step")
    return [funnel.FunnelRow(*r[:9], dict(r[9]) if r[9] else {}, *r[10:]) for r in rows]


def _parquet(path: Path, rows: list[funnel.FunnelRow]) -> Path:
    records = [r.as_record() for r in rows]
    for r in records:
        r["dropped_by_reason"] = list(r["dropped_by_reason"].items())
    pq.write_table(pa.Table.from_pylist(records, schema=FUNNEL_SCHEMA), path)
    return path


def funnel_checks(warehouse: Warehouse, staged: Staged) -> list[dg.AssetCheckResult]:
    """On the staged funnel, recounted from the tables themselves: per stage, its rows summed over sources equal
    the table's count(*), its drops the stage's ledger rows, and its final rows by source sft_final's."""
    problems = []
    for stage, written, dropped, materialized in warehouse.fetch(
            f"SELECT stage, sum(rows_written), sum(dropped), bool_and(materialized) FROM {staged.table} GROUP BY 1"):
        table_rows = warehouse.fetch_one(f"SELECT count(*) FROM {check_identifier(stage)}")[0] if materialized else 0
        ledger = warehouse.fetch_one(f"SELECT count(*) FROM {LEDGER_TABLE} WHERE asset = ?", [stage])[0] \
            if warehouse.table_exists(LEDGER_TABLE) else 0
        if written != table_rows:
            problems.append(f"{stage}: {written:,} rows in the funnel, {table_rows:,} in the table")
        if dropped != ledger:
            problems.append(f"{stage}: {dropped:,} dropped in the funnel, {ledger:,} ledger rows")
    final_by_source = dict(warehouse.fetch("SELECT source, count(*) FROM sft_final GROUP BY 1")) \
        if warehouse.table_exists("sft_final") else {}
    funnel_final = dict(warehouse.fetch(f"SELECT source, sum(rows_written) FROM {staged.table} WHERE stage = ? "
                                        "GROUP BY 1", [funnel.FINAL]))
    for source in sorted(set(final_by_source) | {s for s, n in funnel_final.items() if n}):
        if final_by_source.get(source, 0) != funnel_final.get(source, 0):
            problems.append(f"sft_final[{source}]: {funnel_final.get(source, 0):,} in the funnel, "
                            f"{final_by_source.get(source, 0):,} in the table")
    stale = warehouse.fetch(f"SELECT source, stage, rows_in, rows_out, dropped, unaccounted FROM {staged.table} "
                            "WHERE materialized AND unaccounted <> 0 ORDER BY section, source, step")
    return [
        dg.AssetCheckResult(
            check_name=FUNNEL_MATCHES_TABLES, passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"mismatches": len(problems), "examples": dg.MetadataValue.json(problems[:20]),
                      "threshold": "per stage: funnel rows = table rows, funnel drops = ledger rows; final by source"},
            description="; ".join(problems[:3]) or None),
        dg.AssetCheckResult(
            check_name=FUNNEL_ROWS_ACCOUNTED, passed=not stale, severity=dg.AssetCheckSeverity.WARN,
            metadata={"stages_with_unaccounted_rows": len(stale), "threshold": "rows_in = rows_out + dropped",
                      "examples": dg.MetadataValue.md(markdown_table(
                          ["source", "stage", "in", "out", "dropped", "unaccounted"], stale[:20]))},
            description=(f"{len(stale)} (source, stage) pairs read rows they neither passed on nor ledgered: a stage "
                         "ran before its input was rerun (materialize the downstream partitions again)")
            if stale else None),
    ]


def funnel_metadata(rows: list[funnel.FunnelRow], rollup: list[funnel.FunnelRow], png: bytes) -> dict:
    zero = report.ended_at_zero(rows)
    tables = []
    for section in funnel.SECTION_ORDER:
        headers, body = report.funnel_table(rows, section)
        tables.append(f"**{report.SECTION_TITLES[section]}**\n\n" + markdown_table(headers, body, 200))
    final = funnel.final_rows(rows)
    return {
        "dagster/row_count": len(rows),
        "dagster/column_schema": dg.TableSchema(columns=COLUMNS),
        "sources": len({(r.section, r.source) for r in rows}),
        "final_rows": sum(final.values()),
        "sources_ended_at_zero": len(zero),
        "where_rows_went": dg.MetadataValue.md(
            f"![where each source's rows went](data:image/png;base64,{base64.b64encode(png).decode()})"),
        "funnel_by_source": dg.MetadataValue.md("\n\n".join(tables)),
        "section_rollup": dg.MetadataValue.md(markdown_table(*report.section_rollup_table(rollup))),
        "ended_at_zero": dg.MetadataValue.md(markdown_table(["section", "source", "read", "where its rows went"],
                                                            zero, 200)),
        "final_by_source": dg.MetadataValue.json({f"{k[0]}/{k[1]}": v for k, v in final.items()}),
    }


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["sft_final"],
    check_specs=[
        dg.AssetCheckSpec(FUNNEL_MATCHES_TABLES, asset="source_funnel", blocking=True,
                          description="The funnel recounts to the stage tables and the ledger: per stage, rows and "
                                      "drops summed over sources; final rows per source."),
        dg.AssetCheckSpec(FUNNEL_ROWS_ACCOUNTED, asset="source_funnel",
                          description="Every (source, stage) read exactly what it passed on plus what it ledgered "
                                      "(a stale stage reads rows that are no longer upstream)."),
    ],
)
def source_funnel(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Each source from its source table to sft_final: rows in, rows out and rows dropped by reason, per stage,
    with a section roll-up (section_funnel) and a plot of where each source's rows went."""
    rows, _ = current_funnel(warehouse)
    rollup = funnel.section_rollup(rows)
    with warehouse.staging_folder("source_funnel") as tmp:  # swept by the next stage if a kill leaves it
        rows_path, rollup_path = _parquet(tmp / "rows.parquet", rows), _parquet(tmp / "s.parquet", rollup)
        change = Swap("source_funnel", Select("source_funnel", "SELECT * FROM read_parquet(?)", [str(rows_path)]),
                      side_tables=[Select(SECTION_FUNNEL, "SELECT * FROM read_parquet(?)", [str(rollup_path)])])
        results = swap_checked(context, warehouse, change, lambda staged: funnel_checks(warehouse, staged))
    zero = report.ended_at_zero(rows)
    context.log.info(f"source_funnel: {len({(r.section, r.source) for r in rows})} sources, "
                     f"{sum(funnel.final_rows(rows).values()):,} final rows; ended at 0: "
                     f"{json.dumps([z[1] for z in zero])}")
    return dg.MaterializeResult(metadata=funnel_metadata(rows, rollup, funnel.funnel_plot_png(rows)),
                                check_results=results)
