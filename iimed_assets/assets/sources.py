"""Source assets: every registry source, normalised into the sample row, one partition per source.

Each asset reads its partition's source (bundled sample, hub, hub mirror or local file), stages accepted
rows and ledger rows as Parquet outside the warehouse, then hands them to `Warehouse.swap`: the rows are staged in
tables of their own, every check (conservation, row count, empty prompts, field coverage, duplicate ids) is
evaluated on those staged rows, and only when no blocking check fails does one transaction swap them in. A failing
check leaves the previous rows and ledger of the partition exactly as they were.
"""


import json

import dagster as dg

from iimed_assets import checks
from iimed_assets.assets.common import Progress, ledger_markdown, markdown_table, sample_column_schema, \
    sample_partition_stats, swap_checked
from iimed_assets.assets.stage_records import record_source_read
from iimed_assets.partitions import PARTITIONS_BY_SECTION
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.warehouse import Staged, Swap, Warehouse
from iimed_assets.sources.ingest import IngestResult, ingest, staged_duplicates
from iimed_assets.sources.registry import SourceSpec, get_source


def materialize_source_partition(
    context: dg.AssetExecutionContext, warehouse: Warehouse, catalog: SourceCatalog, *, asset: str,
) -> dg.MaterializeResult:
    name = context.partition_key
    spec = get_source(name)
    origin = catalog.origin(name)
    expects = catalog.expectations(spec)
    context.log.info(f"{asset}[{name}]: reading {spec.title} from {origin}")
    with warehouse.staging_folder(f"{asset}-{name}") as tmp:
        result = ingest(
            catalog.read(name), source=name, section=spec.section, staging_dir=tmp,
            batch_rows=catalog.batch_rows, max_rows=catalog.resolved_max_rows(),
            progress=Progress(context.log.info, f"{asset}[{name}]"), progress_every=10_000,
        )
        duplicates, most_repeated = staged_duplicates(result.rows_path)
        coverage = result.coverage.shares()
        lo, hi = catalog.bounds(spec)
        context.log.info(f"{asset}[{name}]: read {result.rows_read:,} items -> {result.rows_in:,} rows in "
                         f"{result.seconds:.1f}s ({result.rows_per_s:,.0f} items/s); coverage {coverage}; "
                         "checking the staged rows, then swapping them in")
        staged_stats: dict = {}

        def evaluate(staged: Staged) -> list[dg.AssetCheckResult]:
            """Every check on the rows about to be swapped in (their stats are the metadata, too)."""
            stats = staged_stats["stats"] = sample_partition_stats(warehouse, staged.table, name, asset,
                                                                   ledger_table=staged.ledger)
            staged_stats["out_of_scope"] = _out_of_scope(warehouse, staged.ledger, asset, name)
            return [
                # rows_in counts outcomes: one per native item, plus the extra rows of multi-sample items (Apollo).
                checks.rows_conserved(result.rows_in, stats["rows"], sum(stats["ledger"].values())),
                checks.row_count_in_bounds(stats["rows"], lo, hi),
                checks.no_empty_prompts(stats["empty_prompts"], stats["rows"]),
                checks.field_coverage(coverage, expects, result.coverage.rows, result.coverage.missing_examples),
                checks.duplicate_ids_within_bound(duplicates, result.rows_staged, spec.max_duplicate_share,
                                                  most_repeated),
            ]

        check_results = swap_checked(context, warehouse, Swap.source_partition(
            asset, name, result.rows_path, result.ledger_path), evaluate)

    stats = staged_stats["stats"]
    record_source_read(context, warehouse, origin, max_rows=catalog.resolved_max_rows(), rows_read=result.rows_read,
                       rows=stats["rows"], ledgered=sum(stats["ledger"].values()), seconds=result.seconds)
    context.log.info(f"{asset}[{name}]: {stats['rows']:,} rows written, {sum(stats['ledger'].values()):,} in the "
                     f"ledger {json.dumps(stats['ledger']) if stats['ledger'] else ''}")
    return dg.MaterializeResult(
        metadata=_partition_metadata(spec, origin, result, stats, coverage, expects, duplicates,
                                     staged_stats["out_of_scope"]),
        check_results=check_results,
    )


def _out_of_scope(warehouse: Warehouse, ledger_table: str, asset: str, partition: str) -> list[tuple]:
    """What an entry's filter left out, by value (e.g. GeneralThought's `task`s): the list to review the filter by."""
    return warehouse.fetch(
        f"SELECT detail, count(*) FROM {ledger_table} WHERE asset = ? AND partition = ? AND reason = 'out_of_scope' "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20", [asset, partition])


def _partition_metadata(spec: SourceSpec, origin: str, result: IngestResult, stats: dict, coverage: dict[str, float],
                        expects: dict[str, float], duplicates: int, out_of_scope: list[tuple]) -> dict:
    return {
        "dagster/row_count": stats["rows"],
        "dagster/column_schema": sample_column_schema(),
        "source": dg.MetadataValue.md(_source_markdown(spec, origin)),
        "rows_read": result.rows_read,  # native items (records, lines, Apollo lists)
        "rows_from_expansion": result.rows_from_expansion,
        "rows_in": result.rows_in,
        "rows_rejected": sum(stats["ledger"].values()),
        "rejected_by_reason": dg.MetadataValue.md(ledger_markdown(stats["ledger"], result.rows_in)),
        **{f"rejected/{reason}": n for reason, n in stats["ledger"].items()},
        "ledger_examples": dg.MetadataValue.md(markdown_table(["reason", "row", "detail"], stats["ledger_examples"])),
        "field_coverage": dg.MetadataValue.md(_coverage_markdown(coverage, expects)),
        "out_of_scope_values": dg.MetadataValue.md(markdown_table(["value", "rows"], out_of_scope)),
        **{f"share_with_{f}": v for f, v in coverage.items()},
        "duplicate_id_share": round(duplicates / result.rows_staged, 4) if result.rows_staged else 0.0,
        "languages": dg.MetadataValue.json(stats["languages"]),
        "read_rows_per_s": round(result.rows_per_s, 1),
        "read_seconds": round(result.seconds, 2),
        "preview": dg.MetadataValue.md(markdown_table(["id", "prompt", "gold", "turns", "last turn"], stats["preview"])),
    }


def _source_markdown(spec: SourceSpec, origin: str) -> str:
    where = (f"files `{', '.join(spec.files)}`" if spec.files else
             f"config `{spec.config}` split `{spec.split}`" + (f" data_files `{spec.data_files}`" if spec.data_files
                                                               else ""))
    size = f"{spec.expected_rows:,} ({spec.expected_rows_basis})" if spec.expected_rows else spec.expected_rows_basis
    return (f"**{spec.title}** — section `{spec.section}`\n\n"
            f"- hub: `{spec.hf_id or 'none (local file only)'}` {where}"
            + (f", adapter `{spec.adapter}`" if spec.adapter else "") + "\n"
            f"- licence: {spec.licence}\n- read from: `{origin}`\n- expected size: {size}\n"
            + (f"- the card used: {spec.published_rows:,}\n" if spec.published_rows else "")
            + f"- schema evidence: {spec.evidence}\n"
            + (f"- offline sample: {spec.sample_note}\n" if spec.sample_note else "")
            + (f"- note: {spec.notes}\n" if spec.notes else ""))


def _coverage_markdown(shares: dict[str, float], expects: dict[str, float]) -> str:
    rows = [(f, f"{v:.1%}", f"{expects[f]:.0%}" if f in expects else "-",
             ("ok" if v >= expects[f] else "**below**") if f in expects else "")
            for f, v in shares.items()]
    return markdown_table(["field", "share of rows", "declared minimum", ""], rows)


def build_source_asset(name: str, section: str, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        description=description,
        partitions_def=PARTITIONS_BY_SECTION[section],
        group_name="sources",
        kinds={"duckdb", "python"},
        check_specs=checks.source_check_specs(name),
        tags={"section": section},
        metadata={"table": name, "section": section},
    )
    def _source_asset(context: dg.AssetExecutionContext, warehouse: Warehouse,
                      catalog: SourceCatalog) -> dg.MaterializeResult:
        return materialize_source_partition(context, warehouse, catalog, asset=name)

    return _source_asset


public_reasoning_rows = build_source_asset(
    "public_reasoning_rows", "public_reasoning",
    "Section 1: public medical reasoning traces (GeneralThought, Medical-R1-Distill, m23k), as sample rows.")
qa_seed_rows = build_source_asset(
    "qa_seed_rows", "qa_seed",
    "Section 2 seeds: MedMCQA, MedQA, PubMedQA and MedReason prompts with gold answers.")
r1_trace_rows = build_source_asset(
    "r1_trace_rows", "r1_traces",
    "Section 3: public R1 traces from seven sets, before the medical/biology domain filter.")
instruct_prompt_rows = build_source_asset(
    "instruct_prompt_rows", "instruct",
    "Section 4: medical instruction prompts with reference answers (Apollo, ChatDoctor, Evol, AM-Qwen3).")
eval_items = build_source_asset(
    "eval_items", "eval",
    "Evaluation-set items used only for decontamination (never training rows).")

SOURCE_ASSETS = [public_reasoning_rows, qa_seed_rows, r1_trace_rows, instruct_prompt_rows, eval_items]
