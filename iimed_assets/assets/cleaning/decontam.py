"""`sft_decontaminated`: prompts that copy an eval item removed, in the card's two steps (word 8-grams, then
rapidfuzz ratio >= 80), by `core.decontam.Decontaminator` over the deduped rows in `cand_order` batches."""

import os
import time

import dagster as dg
import pyarrow as pa
from pydantic import Field

from iimed_assets import checks
from iimed_assets.assets.cleaning.common import (
    NO_CONTAMINATION,
    count,
    id_prompt_batches,
    no_contamination,
    read_eval_items,
    table_metadata,
)
from iimed_assets.assets.common import Progress, histogram_markdown, markdown_table, staged_partition, swap_checked
from iimed_assets.assets.stage_records import record_stage_run
from iimed_assets.core import decontam
from iimed_assets.resources.warehouse import Select, Swap, Warehouse


class DecontamConfig(dg.Config):
    ngram: int = Field(default=8, description="word n-gram length of step 1 (open-r1: 8)")
    max_item_df: int = Field(default=3, description="ignore n-grams shared by more than this many eval items")
    min_shared: int = Field(default=3, description="n-grams a prompt must share with one eval item")
    fuzzy_threshold: float = Field(default=80.0, description="step 2: rapidfuzz ratio >= this (the card: 80)")
    fuzzy_workers: int = Field(default=0, description="threads for step 2 (0 = one per CPU core); same answer")
    batch_rows: int = 2000


def decontaminated_swap(ledger_path) -> Swap:
    return Swap("sft_decontaminated",
                Select("sft_decontaminated", "SELECT * FROM sft_deduped WHERE id NOT IN "
                                             "(SELECT row_id FROM read_parquet(?)) ORDER BY cand_order",
                       [str(ledger_path)]),
                ledger_path=ledger_path)


def decontam_metadata(warehouse: Warehouse, finder: decontam.Decontaminator, config: DecontamConfig,
                      seconds: float) -> dict:
    st, fuzzy = finder.stats, finder.fuzzy_index
    return {
        **table_metadata(warehouse, "sft_decontaminated"),
        "rows_in": st.rows,
        "removed_by_step": dg.MetadataValue.json(dict(st.by_step)),
        "removed_by_eval_set": dg.MetadataValue.md(histogram_markdown(dict(st.by_eval_set.most_common()), "eval set")),
        "eval_items": len(finder.items),
        "indexed_ngrams": len(finder.ngram_index),
        "common_ngrams_left_out": finder.ngram_index.dropped_common,
        "fuzzy_pairs_brute_force": len(finder.fuzzy_texts) * (st.rows - st.by_step["ngram"]),
        "fuzzy_pairs_in_length_window": fuzzy.pairs_in_window,
        "fuzzy_pairs_lcs": fuzzy.pairs_lcs,
        "fuzzy_pairs_early_exit": fuzzy.pairs_early_exit,
        "fuzzy_pairs_scored": fuzzy.pairs_scored,
        "fuzzy_pairs_transposed": fuzzy.pairs_transposed,
        "fuzzy_pairs_shared_lane": fuzzy.pairs_shared,
        "fuzzy_lcs_rows_read_share": round(fuzzy.lcs_rows_read / fuzzy.lcs_rows_total, 4)
        if fuzzy.lcs_rows_total else 0.0,
        "parameters": dg.MetadataValue.json(config.model_dump()),
        "rows_per_s": round(st.rows / seconds, 1) if seconds > 0 else 0.0,
        "examples_removed": dg.MetadataValue.md(markdown_table(["step", "eval set", "prompt", "evidence"],
                                                               st.examples, 160)),
        "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(warehouse.ledger_counts("sft_decontaminated"),
                                                                     "reason")),
    }


CHECK_SPECS = [
    dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_decontaminated", blocking=True,
                      description="Every deduped row is kept or ledgered with the eval item it matches."),
    dg.AssetCheckSpec(NO_CONTAMINATION, asset="sft_decontaminated", blocking=True,
                      description="Re-running the 8-gram test against all eval sets finds nothing."),
]


@dg.asset(group_name="cleaning", kinds={"duckdb"}, deps=["sft_deduped", "eval_items"], check_specs=CHECK_SPECS)
def sft_decontaminated(context: dg.AssetExecutionContext, config: DecontamConfig,
                       warehouse: Warehouse) -> dg.MaterializeResult:
    """Prompts that copy an eval item removed: step 1 shared word 8-grams, step 2 rapidfuzz ratio >= 80."""
    started = time.perf_counter()
    items = read_eval_items(warehouse)
    if not items:
        raise dg.Failure("eval_items is empty: materialize eval_items first (decontamination needs the eval sets)")
    finder = decontam.Decontaminator(items, ngram=config.ngram, max_item_df=config.max_item_df,
                                     min_shared=config.min_shared, fuzzy_threshold=config.fuzzy_threshold,
                                     fuzzy_workers=config.fuzzy_workers or os.cpu_count() or 1)
    context.log.info(f"eval index: {len(items):,} items, {len(finder.ngram_index):,} {config.ngram}-grams "
                     f"({finder.ngram_index.dropped_common:,} common ones left out), {len(finder.fuzzy_texts):,} "
                     f"fuzzy texts ({time.perf_counter() - started:.1f}s)")
    n = count(warehouse, "sft_deduped")
    progress = Progress(context.log.info, "sft_decontaminated", n)
    with staged_partition(warehouse, "sft_decontaminated", "all", pa.schema([("id", pa.string())])) as stage:
        for batch in id_prompt_batches(warehouse, "sft_deduped", config.batch_rows):
            for hit in finder.process([i for i, _ in batch], [p for _, p in batch]):
                stage.ledger.add({"row_id": hit.row_id, "reason": hit.reason, "detail": hit.detail})
            progress(finder.stats.rows)
        stage.close()
        results = swap_checked(context, warehouse, decontaminated_swap(stage.ledger.path), lambda staged: [
            checks.rows_conserved(n, staged.count(warehouse), sum(staged.ledger_counts(warehouse).values())),
            no_contamination(decontam.contamination_rate(
                finder.ngram_index, id_prompt_batches(warehouse, staged.table, config.batch_rows)))])
    # the settings that decide which rows go; threads and batch size only change the speed (stats)
    record_stage_run(context, warehouse, settings=config.model_dump(exclude={"fuzzy_workers", "batch_rows"}),
                     started=started, runtime={"fuzzy_workers": finder.fuzzy_workers, "batch_rows": config.batch_rows},
                     stats={"rows_in": n, "eval_items": len(items), "removed_by_step": dict(finder.stats.by_step),
                            "removed_by_eval_set": dict(finder.stats.by_eval_set)})
    return dg.MaterializeResult(metadata=decontam_metadata(warehouse, finder, config, time.perf_counter() - started),
                                check_results=results)
