"""`sft_final`: the final rows, split into train and an optional validation split, with the checks that guard
the whole cleaning group."""

import dagster as dg
from pydantic import Field

from iimed_assets.assets.cleaning.common import (
    LEDGERED_STAGES,
    NO_CONTAMINATION,
    SECTION_INPUTS,
    column_schema,
    count,
    id_prompt_batches,
    no_contamination,
    preview,
    read_eval_items,
)
from iimed_assets.assets.common import histogram_png_markdown, markdown_table, swap_checked
from iimed_assets.core import decontam
from iimed_assets.resources.warehouse import Select, Staged, Swap, Warehouse

NO_DUPLICATE_RESPONSES = "no_exact_duplicate_responses"
NO_EMPTY_MESSAGES = "no_empty_messages"
TOTAL_IN_BOUNDS = "total_in_bounds"
CONSERVED_THROUGH_CLEANING = "rows_conserved_through_cleaning"


class FinalConfig(dg.Config):
    validation_fraction: float = Field(default=0.0, description="held-out share per source (0 = train only)")
    validation_max_per_source: int = Field(default=500, description="cap on held-out rows per source")
    seed: int = 0
    min_rows: int = Field(default=1, description="ERROR below this many rows (the card: 2,197,741 at full scale)")
    max_rows: int | None = Field(default=None, description="WARN above this many rows")


def final_swap(config: FinalConfig) -> Swap:
    # Per source, the rows with the smallest hash(seed, id) are held out: deterministic and stratified.
    return Swap("sft_final", Select(
        "sft_final",
        "SELECT * EXCLUDE (_rank, _n), CASE WHEN _rank <= least(floor(_n * ?), ?) THEN 'validation' "
        "ELSE 'train' END AS split FROM (SELECT *, row_number() OVER (PARTITION BY source "
        "ORDER BY hash(? || id)) AS _rank, count(*) OVER (PARTITION BY source) AS _n "
        "FROM sft_decontaminated) ORDER BY cand_order",
        [config.validation_fraction, config.validation_max_per_source, str(config.seed)]))


def recorded_ngram_index(warehouse: Warehouse) -> decontam.NgramIndex:
    """The n-gram index `sft_decontaminated` used, rebuilt with the parameters it recorded in `stage_runs`."""
    params, _ = warehouse.stage_record("sft_decontaminated")
    if not params:
        raise dg.Failure("sft_decontaminated has no stage record: materialize it first")
    return decontam.NgramIndex(read_eval_items(warehouse), params["ngram"], params["max_item_df"],
                               params["min_shared"])


def final_checks(warehouse: Warehouse, staged: Staged, config: FinalConfig,
                 index: decontam.NgramIndex) -> list[dg.AssetCheckResult]:
    """The group's guards, on the staged final rows."""
    t = staged.table
    total = staged.count(warehouse)
    dup_groups, dup_rows = warehouse.fetch_one(
        f"SELECT count(*), coalesce(sum(c), 0) FROM (SELECT count(*) AS c FROM {t} "
        "GROUP BY messages[len(messages)].content HAVING count(*) > 1)")
    empty = warehouse.fetch_one(
        f"SELECT count(*) FROM {t} WHERE len(messages) = 0 OR messages[len(messages)].role <> 'assistant' "
        "OR list_bool_or(list_transform(messages, lambda m: m.content IS NULL OR trim(m.content) = ''))")[0]
    section_rows = sum(count(warehouse, s.table) for s in SECTION_INPUTS)
    ledgered = {a: sum(warehouse.ledger_counts(a).values()) for a in LEDGERED_STAGES}
    too_few = total < config.min_rows
    too_many = config.max_rows is not None and total > config.max_rows
    return [
        dg.AssetCheckResult(check_name=TOTAL_IN_BOUNDS, passed=not (too_few or too_many),
                            severity=dg.AssetCheckSeverity.ERROR if too_few else dg.AssetCheckSeverity.WARN,
                            metadata={"rows": total, "min_rows": config.min_rows,
                                      "max_rows": config.max_rows if config.max_rows is not None else "none"}),
        dg.AssetCheckResult(check_name=NO_DUPLICATE_RESPONSES, passed=dup_groups == 0,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"duplicate_groups": int(dup_groups), "rows_in_duplicate_groups": int(dup_rows)}),
        dg.AssetCheckResult(check_name=NO_EMPTY_MESSAGES, passed=empty == 0, severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"rows_with_empty_or_unanswered_messages": int(empty)}),
        dg.AssetCheckResult(check_name=CONSERVED_THROUGH_CLEANING,
                            passed=section_rows == total + sum(ledgered.values()),
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"section_rows": section_rows, "final_rows": total,
                                      **{f"ledgered_{a}": v for a, v in ledgered.items()},
                                      "unaccounted": section_rows - total - sum(ledgered.values())}),
        no_contamination(decontam.contamination_rate(index, id_prompt_batches(warehouse, t))),
    ]


def funnel_markdown(warehouse: Warehouse, section_rows: int, final_rows: int) -> str:
    """Rows through the cleaning stages, with each stage's ledger reasons, as a table and a bar chart."""
    steps: list[tuple[str, int, str]] = [("section tables", section_rows, "")]
    for asset in LEDGERED_STAGES:
        ledger = warehouse.ledger_counts(asset)
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(ledger.items(), key=lambda kv: -kv[1]))
        steps.append((asset, count(warehouse, asset), reasons or "-"))
    steps.append(("sft_final", final_rows, "-"))
    table_md = markdown_table(["stage", "rows", "removed (ledger reason: rows)"],
                              [(name, f"{rows:,}", why) for name, rows, why in steps])
    plot = histogram_png_markdown({name: rows for name, rows, _ in steps}, "rows through cleaning", "stage")
    return table_md + "\n\n" + plot


def final_metadata(warehouse: Warehouse) -> dict:
    total = count(warehouse, "sft_final")
    by_section = warehouse.fetch("SELECT section, count(*) FILTER (WHERE split = 'train'), "
                                 "count(*) FILTER (WHERE split = 'validation') FROM sft_final GROUP BY 1 ORDER BY 1")
    by_source = warehouse.fetch("SELECT section, source, count(*) FILTER (WHERE split = 'train'), "
                                "count(*) FILTER (WHERE split = 'validation') FROM sft_final GROUP BY ALL ORDER BY 1, 2")
    per_section = {s: t + v for s, t, v in by_section}
    section_rows = sum(count(warehouse, s.table) for s in SECTION_INPUTS)
    return {
        "dagster/row_count": total,
        "dagster/column_schema": column_schema(dg.TableColumn("split", "VARCHAR", description="train | validation")),
        "splits": dg.MetadataValue.json(dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1 "
                                                             "ORDER BY 1"))),
        "rows_by_section": dg.MetadataValue.md(markdown_table(["section", "train", "validation"], by_section)),
        "rows_by_source": dg.MetadataValue.md(markdown_table(["section", "source", "train", "validation"], by_source)),
        "section_plot": dg.MetadataValue.md(histogram_png_markdown(per_section, "final rows by section", "section")
                                            if per_section else "_(no rows)_"),
        "cleaning_funnel": dg.MetadataValue.md(funnel_markdown(warehouse, section_rows, total)),
        "preview": dg.MetadataValue.md(preview(warehouse, "sft_final")),
    }


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["sft_decontaminated"],
    check_specs=[
        dg.AssetCheckSpec(TOTAL_IN_BOUNDS, asset="sft_final", blocking=True,
                          description="The final count lies within the configured bounds (ERROR below the minimum)."),
        dg.AssetCheckSpec(NO_DUPLICATE_RESPONSES, asset="sft_final", blocking=True,
                          description="No two rows have the same final response."),
        dg.AssetCheckSpec(NO_EMPTY_MESSAGES, asset="sft_final", blocking=True,
                          description="No message has empty content and every row ends with an assistant turn."),
        dg.AssetCheckSpec(CONSERVED_THROUGH_CLEANING, asset="sft_final", blocking=True,
                          description="rows of the section tables = final rows + rows ledgered by every cleaning stage."),
        dg.AssetCheckSpec(NO_CONTAMINATION, asset="sft_final", blocking=True,
                          description="Re-running the 8-gram test (with the parameters sft_decontaminated used) "
                                      "against all eval sets finds nothing."),
    ],
)
def sft_final(context: dg.AssetExecutionContext, config: FinalConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """The final split: train, plus an optional held-out validation split stratified by source."""
    index = recorded_ngram_index(warehouse)
    results = swap_checked(context, warehouse, final_swap(config),
                           lambda staged: final_checks(warehouse, staged, config, index))
    return dg.MaterializeResult(metadata=final_metadata(warehouse), check_results=results)
