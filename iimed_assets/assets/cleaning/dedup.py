"""`sft_deduped`: near-duplicate responses removed (word 4-grams, exact Jaccard >= 0.7 against an earlier kept
response), in one streaming pass of `core.dedup.StreamingDedup` over the candidates in `cand_order`."""

import time
from functools import partial

import dagster as dg
import pyarrow as pa
from pydantic import Field

from iimed_assets import checks
from iimed_assets.assets.cleaning.common import count, table_metadata
from iimed_assets.assets.common import Progress, histogram_markdown, markdown_table, staged_partition, swap_checked
from iimed_assets.assets.stage_records import record_stage_run
from iimed_assets.core import dedup
from iimed_assets.core.schema import response_text
from iimed_assets.resources.warehouse import Select, Swap, Warehouse

DROP_SCHEMA = pa.schema([("ord", pa.int64()), ("kept_ord", pa.int64()), ("jaccard", pa.float64())])


class DedupConfig(dg.Config):
    ngram: int = Field(default=4, description="word n-gram shingles (the card: 4)")
    threshold: float = Field(default=0.7, description="drop at exact Jaccard >= this (the card: 0.7)")
    num_perm: int = 128
    seed: int = 1
    batch_rows: int = Field(default=5000, description="rows read, hashed and verified per chunk")
    cached_sets: int = Field(default=20_000, description="shingle sets of kept rows held in memory for verifying "
                                                         "later rows (an LRU cache; misses are re-read)")
    scratch_memory: str = Field(default="256MB", description="DuckDB memory_limit of the stage's scratch database "
                                                             "(the kept rows' buckets; it spills beyond it)")


def responses_by_order(warehouse: Warehouse, orders: list[int]) -> list[tuple[int, str]]:
    """Kept rows' responses, re-read for the dedup pass's set cache (one query per chunk)."""
    rows = warehouse.fetch("SELECT cand_order, messages FROM sft_candidates WHERE cand_order IN "
                           "(SELECT unnest(?::BIGINT[]))", [orders])
    return [(o, response_text(m)) for o, m in rows]


def deduped_swap(drops_path) -> Swap:
    """The candidates minus the dropped rows, each ledgered with the kept row it duplicates and their Jaccard."""
    return Swap(
        "sft_deduped",
        # An anti-join in the candidates' own (cand_order) order, not a sort: a sort of every row with its messages
        # needs far more than a small memory_limit (measured: out of memory at 64 MB on 20k rows).
        Select("sft_deduped", "SELECT c.* FROM sft_candidates c ANTI JOIN read_parquet(?) d ON c.cand_order = d.ord",
               [str(drops_path)]),
        ledger_sql="SELECT d.id AS row_id, 'near_duplicate' AS reason, "
                   "'kept=' || k.id || ' jaccard=' || printf('%.3f', x.jaccard) AS detail "
                   "FROM read_parquet(?) x JOIN sft_candidates d ON d.cand_order = x.ord "
                   "JOIN sft_candidates k ON k.cand_order = x.kept_ord ORDER BY x.ord",
        ledger_params=[str(drops_path)])


def dedup_metadata(warehouse: Warehouse, stats: dedup.DedupStats, parameters: dict, seconds: float) -> dict:
    examples = warehouse.fetch(
        "SELECT l.row_id, l.detail, c.messages[len(c.messages)].content FROM row_ledger l "
        "JOIN sft_candidates c ON c.id = l.row_id WHERE l.asset = 'sft_deduped' ORDER BY l.row_id LIMIT 5")
    n = stats.rows
    return {
        **table_metadata(warehouse, "sft_deduped"),
        "rows_in": n,
        "dropped": stats.dropped,
        "dropped_share": round(stats.dropped / n, 4) if n else 0.0,
        "exact_copies": stats.exact_copies,
        "lsh": dg.MetadataValue.json(parameters),
        "candidate_pairs": stats.candidate_pairs,
        "pairs_verified": stats.pairs_verified,
        "kept_sets_reread": stats.sets_reread,
        "rows_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        "jaccard_of_dropped": dg.MetadataValue.md(histogram_markdown(dict(sorted(stats.jaccard_of_dropped.items())),
                                                                     "jaccard ≥")),
        "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(warehouse.ledger_counts("sft_deduped"), "reason")),
        "examples_dropped": dg.MetadataValue.md(markdown_table(["row", "detail", "response"], examples, 160)),
    }


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["sft_candidates"],
    check_specs=[dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_deduped", blocking=True,
                                   description="Every candidate is kept or ledgered as a near-duplicate.")],
)
def sft_deduped(context: dg.AssetExecutionContext, config: DedupConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Near-duplicate responses removed, in one pass over the candidates in `cand_order` chunks. Per chunk: word
    4-gram shingles and MinHash signatures, exact copies (same shingle set) resolved by a key lookup, then each
    remaining row is verified by exact Jaccard against the earlier *kept* rows that share an LSH bucket with it
    (`core.dedup.StreamingDedup`: the kept rows' bucket keys live in a scratch DuckDB file, so memory does not
    grow with the row count). The earliest row of a group stays; the others are ledgered with the kept row's id
    and the Jaccard."""
    started = time.perf_counter()
    n = count(warehouse, "sft_candidates")
    progress = Progress(context.log.info, "sft_deduped", n)
    with staged_partition(warehouse, "sft_deduped", "all", DROP_SCHEMA) as stage, dedup.StreamingDedup(
            stage.rows.path.parent / "scratch.duckdb", partial(responses_by_order, warehouse), ngram=config.ngram,
            threshold=config.threshold, num_perm=config.num_perm, seed=config.seed, cached_sets=config.cached_sets,
            scratch_memory=config.scratch_memory) as pass_:
        for batch in warehouse.iter_keyset("sft_candidates", ["cand_order", "messages"], "cand_order",
                                           batch_rows=config.batch_rows):
            drops = pass_.process([r["cand_order"] for r in batch], [response_text(r["messages"]) for r in batch])
            stage.rows.writer.write_table(pa.table({"ord": [d.order for d in drops],
                                                    "kept_ord": [d.kept_order for d in drops],
                                                    "jaccard": [d.jaccard for d in drops]}, schema=DROP_SCHEMA))
            progress(pass_.stats.rows, f"{pass_.stats.dropped:,} dropped, "
                                       f"{pass_.stats.pairs_verified:,} pairs verified")
        stage.rows.close()
        stats = pass_.stats
        context.log.info(f"sft_deduped: {n:,} rows, {stats.exact_copies:,} exact copies, {stats.dropped:,} dropped, "
                         f"LSH bands={pass_.bands}×{pass_.rows_per_band}, {stats.pairs_verified:,} pairs verified")
        results = swap_checked(context, warehouse, deduped_swap(stage.rows.path), lambda staged: [
            checks.rows_conserved(n, staged.count(warehouse), sum(staged.ledger_counts(warehouse).values()))])
    record_stage_run(context, warehouse, settings=pass_.parameters, started=started,
                     stats={"rows_in": n, "dropped": stats.dropped, "exact_copies": stats.exact_copies})
    return dg.MaterializeResult(metadata=dedup_metadata(warehouse, stats, pass_.parameters,
                                                        time.perf_counter() - started), check_results=results)
