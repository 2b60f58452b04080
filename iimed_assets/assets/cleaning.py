"""Cleaning and output: the four sections merged, response dedup, two-step decontamination, the final split,
the export and the dataset card.

    sft_candidates ─► sft_deduped ─► sft_decontaminated ─► sft_final ─► sft_export

All of them are unpartitioned (dedup and decontamination look across every source). Each stage streams its input
in `cand_order` batches, does the slow work outside DuckDB, and swaps its table and ledger rows in one
transaction. `cand_order` is the stable order "earliest row" refers to: section (card order), source, id.
"""

import hashlib
import json
import os
import shutil
import time
from collections import Counter, OrderedDict
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from iimed_assets import checks
from iimed_assets.assets.common import Progress, histogram_markdown, histogram_png_markdown, markdown_table, staged_partition
from iimed_assets.core import decontam, dedup
from iimed_assets.core.schema import SAMPLE_COLUMN_NAMES
from iimed_assets.resources.warehouse import LEDGER_TABLE, Warehouse

# The section tables that feed the cleaning stages, in the card's order, with the stage scores each carries.
SECTION_INPUTS = [
    ("public_reasoning_rows", "public_reasoning", "NULL"),
    ("qa_verified", "qa", "json_object('verify_method', verify_method, 'samples_total', samples_total, "
                          "'samples_correct', samples_correct, 'kept_sample_index', kept_sample_index, "
                          "'generator', generator)"),
    ("r1_medical_traces", "r1_traces", "json_object('cluster_id', cluster_id, 'domain', domain)"),
    ("instruct_judged", "instruct", "json_object('judge_score', judge_score, 'judge_model', judge_model, "
                                    "'generator', generator, 'response_origin', response_origin)"),
]
CLEANING_ASSETS = ("sft_candidates", "sft_deduped", "sft_decontaminated")
ROW_COLUMNS = [*SAMPLE_COLUMN_NAMES, "origin", "provenance", "cand_order"]
EXTRA_COLUMNS = [
    dg.TableColumn("origin", "VARCHAR", description="the stage table the row came from"),
    dg.TableColumn("provenance", "JSON", description="scores from earlier stages (judge score, verify method, ...)"),
    dg.TableColumn("cand_order", "BIGINT", description="stable order: section (card order), source, id"),
]

NO_CONTAMINATION = "no_contamination"
NO_DUPLICATE_RESPONSES = "no_exact_duplicate_responses"
NO_EMPTY_MESSAGES = "no_empty_messages"
TOTAL_IN_BOUNDS = "total_in_bounds"
CONSERVED_THROUGH_CLEANING = "rows_conserved_through_cleaning"


def _schema() -> dg.TableSchema:
    from iimed_assets.assets.common import sample_column_schema

    base = sample_column_schema()
    return dg.TableSchema(columns=[*base.columns, *EXTRA_COLUMNS])


def _count(warehouse: Warehouse, table: str) -> int:
    return int(warehouse.fetch_one(f"SELECT count(*) FROM {table}")[0]) if warehouse.table_exists(table) else 0


def _breakdown(warehouse: Warehouse, table: str) -> str:
    rows = warehouse.fetch(f"SELECT section, source, count(*) FROM {table} GROUP BY ALL ORDER BY 1, 2")
    return markdown_table(["section", "source", "rows"], rows)


def _preview(warehouse: Warehouse, table: str) -> str:
    rows = warehouse.fetch(f"SELECT id, source, prompt, messages[len(messages)].content FROM {table} "
                           "ORDER BY cand_order LIMIT 5")
    return markdown_table(["id", "source", "prompt", "response"], rows, 160)


def _funnel_markdown(warehouse: Warehouse, section_rows: int, final_rows: int) -> str:
    """Rows through the cleaning stages, with each stage's ledger reasons, as a table and a bar chart."""
    steps: list[tuple[str, int, str]] = [("section tables", section_rows, "")]
    for asset in CLEANING_ASSETS:
        ledger = warehouse.ledger_counts(asset)
        rows = _count(warehouse, asset)
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(ledger.items(), key=lambda kv: -kv[1]))
        steps.append((asset, rows, reasons or "-"))
    steps.append(("sft_final", final_rows, "-"))
    table_md = markdown_table(["stage", "rows", "removed (ledger reason: rows)"],
                              [(name, f"{rows:,}", why) for name, rows, why in steps])
    plot = histogram_png_markdown({name: rows for name, rows, _ in steps}, "rows through cleaning", "stage")
    return table_md + "\n\n" + plot


# ---- sft_candidates -------------------------------------------------------------------------------------------

@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["public_reasoning_rows", "qa_verified", "r1_medical_traces", "instruct_judged"],
    check_specs=[dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_candidates", blocking=True,
                                   description="Every row of every section table is a candidate or ledgered "
                                               "(no_response).")],
)
def sft_candidates(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """The union of the four sections' output tables, in the sample row schema, with provenance columns.
    A section whose table does not exist yet (its stage has not run) contributes no rows and is named in the
    metadata."""
    present, missing, rows_in = [], [], 0
    selects = []
    sample_cols = ", ".join(SAMPLE_COLUMN_NAMES)
    for table, label, provenance in SECTION_INPUTS:
        if not warehouse.table_exists(table):
            missing.append(table)
            continue
        present.append(table)
        rows_in += _count(warehouse, table)
        selects.append(f"SELECT {sample_cols}, '{table}' AS origin, CAST({provenance} AS JSON) AS provenance, "
                       f"{len(selects)} AS _section_rank FROM {table}")
    if not selects:
        raise dg.Failure("no section table exists yet: materialize the section assets first")
    union = " UNION ALL BY NAME ".join(selects)
    # An SFT sample must end in a non-empty assistant turn; a row without one (a prompt-only source) is ledgered.
    answered = ("len(messages) > 0 AND messages[len(messages)].role = 'assistant' "
                "AND trim(coalesce(messages[len(messages)].content, '')) <> ''")
    warehouse.replace_table(
        table="sft_candidates", asset="sft_candidates", ledger_path=None, run_id=context.run.run_id,
        select_sql=f"SELECT {sample_cols}, origin, provenance, "
                   f"row_number() OVER (ORDER BY _section_rank, source, id) AS cand_order FROM ({union}) "
                   f"WHERE {answered} ORDER BY cand_order", params=[],
        ledger_sql=f"SELECT id AS row_id, 'no_response' AS reason, origin || ': the last turn is ' || "
                   f"coalesce(messages[len(messages)].role, 'missing') || ', not a non-empty assistant answer' AS detail "
                   f"FROM ({union}) WHERE NOT ({answered}) ORDER BY id")
    written = _count(warehouse, "sft_candidates")
    ledger = warehouse.ledger_counts("sft_candidates")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "dagster/column_schema": _schema(),
            "inputs_present": dg.MetadataValue.json(present),
            "inputs_missing": dg.MetadataValue.json(missing),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "rows_by_source": dg.MetadataValue.md(_breakdown(warehouse, "sft_candidates")),
            "preview": dg.MetadataValue.md(_preview(warehouse, "sft_candidates")),
        },
        check_results=[checks.rows_conserved(rows_in, written, sum(ledger.values()))],
    )


# ---- sft_deduped ----------------------------------------------------------------------------------------------

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


def _response(messages) -> str:
    for m in reversed(messages or []):
        if m["role"] == "assistant":
            return m["content"] or ""
    return ""


def _exact_key(shingle_set: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(shingle_set.tobytes(), digest_size=8).digest(), "little")


class _SetCache:
    """Shingle sets of kept rows by cand_order, least recently used dropped past `size`; misses are read back from
    sft_candidates and re-shingled in one query per chunk."""

    def __init__(self, warehouse: Warehouse, size: int, ngram: int, hasher) -> None:
        self.warehouse, self.size, self.ngram, self.hasher = warehouse, size, ngram, hasher
        self.sets: OrderedDict[int, np.ndarray] = OrderedDict()
        self.misses = 0

    def put(self, o: int, s: np.ndarray) -> None:
        self.sets[o] = s
        self.sets.move_to_end(o)
        while len(self.sets) > self.size:
            self.sets.popitem(last=False)

    def ensure(self, ords: list[int]) -> dict[int, np.ndarray]:
        """The sets of `ords`, fetching the missing ones; returned as a dict so eviction cannot lose them."""
        out = {o: self.sets[o] for o in ords if o in self.sets}
        for o in out:
            self.sets.move_to_end(o)
        missing = [o for o in ords if o not in out]
        if missing:
            self.misses += len(missing)
            rows = self.warehouse.fetch("SELECT cand_order, messages FROM sft_candidates WHERE cand_order IN "
                                        "(SELECT unnest(?::BIGINT[]))", [missing])
            for (o, _), shingles in zip(rows, dedup.shingle_sets([_response(m) for _, m in rows], self.ngram,
                                                                 self.hasher)):
                out[o] = shingles
                self.put(o, shingles)
        return out


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["sft_candidates"],
    check_specs=[dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_deduped", blocking=True,
                                   description="Every candidate is kept or ledgered as a near-duplicate.")],
)
def sft_deduped(context: dg.AssetExecutionContext, config: DedupConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Near-duplicate responses removed, in one pass over the candidates in `cand_order` chunks. Per chunk: word
    4-gram shingles and MinHash signatures (vectorised), exact copies (same shingle set) resolved by a key lookup,
    then each remaining row is verified by exact Jaccard against the earlier *kept* rows that share an LSH bucket
    with it (`dedup.greedy_verify`). The kept rows' bucket keys live in a scratch DuckDB file, so memory does not
    grow with the row count and a cluster of near-copies costs one verified pair per copy. The earliest row of a
    group stays; the others are ledgered with the kept row's id and the Jaccard."""
    started = time.perf_counter()
    n = _count(warehouse, "sft_candidates")
    bands, rows_per_band = dedup.lsh_params(config.num_perm, config.threshold)
    hasher = dedup._WordHasher(max_vocab=500_000)  # word-hash cache: bounded, reset when full
    minhasher = dedup.MinHasher(config.num_perm, config.seed)
    progress = Progress(context.log.info, "sft_deduped", n)
    drop_schema = pa.schema([("ord", pa.int64()), ("kept_ord", pa.int64()), ("jaccard", pa.float64())])
    cache = _SetCache(warehouse, config.cached_sets, config.ngram, hasher)
    pairs_total = pairs_verified = exact_copies = dropped = 0
    sims: Counter = Counter()
    with staged_partition(warehouse, "sft_deduped", "all", drop_schema) as stage:
        tmp = stage.rows.path.parent
        scratch = duckdb.connect(str(tmp / "scratch.duckdb"), config={"memory_limit": config.scratch_memory})
        try:
            # exact_reps: the first row of each shingle set, with its own match if it was dropped.
            scratch.execute("CREATE TABLE exact_reps (key UBIGINT, ord BIGINT, kept_ord BIGINT, jaccard DOUBLE)")
            scratch.execute("CREATE TABLE kept_bands (bucket UBIGINT, ord BIGINT)")
            done = 0
            for batch in warehouse.iter_ordered("sft_candidates", ["cand_order", "messages"], "cand_order",
                                                batch_rows=config.batch_rows):
                ords = [r["cand_order"] for r in batch]
                hashes, counts = dedup.shingle_batch([_response(r["messages"]) for r in batch], config.ngram, hasher)
                sets = {o: x for o, x in zip(ords, dedup.split_sets(hashes, counts)) if len(x)}
                keys = {o: _exact_key(s) for o, s in sets.items()}  # a row with no shingle is never a duplicate
                known = dict(scratch.execute(
                    "SELECT key, [ord, kept_ord, jaccard] FROM exact_reps WHERE key IN (SELECT unnest(?::UBIGINT[]))",
                    [sorted(set(keys.values()))]).fetchall())
                first: dict[int, int] = {}
                reps, followers = [], []
                for o, k in keys.items():
                    if k in known or k in first:
                        followers.append((o, k))
                    else:
                        first[k] = o
                        reps.append(o)
                # Candidates: the earlier chunks' kept rows that share a bucket with a rep of this chunk.
                at = {o: i for i, o in enumerate(ords)}
                band = dedup.band_keys(minhasher.signatures(hashes, counts), bands, rows_per_band)[
                    np.array([at[o] for o in reps], dtype=np.int64)]
                rep_ords = np.array(reps, dtype=np.int64)
                scratch.register("chunk_bands", pa.table({"ord": np.repeat(rep_ords, bands),
                                                          "bucket": band.reshape(-1)}))
                found = scratch.execute("SELECT DISTINCT c.ord, k.ord FROM chunk_bands c JOIN kept_bands k "
                                        "ON c.bucket = k.bucket ORDER BY 1, 2").fetchnumpy()
                prior: dict[int, list[int]] = {}
                for j, i in zip(found["ord"].tolist(), found["ord_1"].tolist()):
                    prior.setdefault(j, []).append(i)
                prior_sets = cache.ensure(sorted({i for c in prior.values() for i in c}))
                kept, matches, pairs, verified = dedup.greedy_verify(
                    reps, [sets[o] for o in reps], band, config.threshold, prior, prior_sets.__getitem__)
                pairs_total += pairs
                pairs_verified += verified
                # Exact copies follow their rep: dropped with the rep as match, or with the rep's own match.
                rep_match = {k: (v[0], v[1], v[2]) for k, v in known.items()}
                for o in reps:
                    m = matches.get(o)
                    rep_match[keys[o]] = (o, m[0] if m else None, m[1] if m else None)
                for o, k in followers:
                    rep, kept_ord, sim = rep_match[k]
                    matches[o] = (rep, 1.0) if kept_ord is None else (kept_ord, sim)
                exact_copies += len(followers)
                drops = sorted(matches.items())
                stage.rows.writer.write_table(pa.table(
                    {"ord": [o for o, _ in drops], "kept_ord": [m[0] for _, m in drops],
                     "jaccard": [float(m[1]) for _, m in drops]}, schema=drop_schema))
                dropped += len(drops)
                sims.update(f"{np.floor(m[1] * 20) / 20:.2f}" for _, m in drops)
                scratch.register("new_reps", pa.table({
                    "key": pa.array([keys[o] for o in reps], pa.uint64()), "ord": rep_ords,
                    "kept_ord": pa.array([matches[o][0] if o in matches else None for o in reps], pa.int64()),
                    "jaccard": pa.array([matches[o][1] if o in matches else None for o in reps], pa.float64())}))
                scratch.execute("INSERT INTO exact_reps SELECT * FROM new_reps")
                keep = np.array(kept, dtype=bool)
                scratch.register("new_kept", pa.table({"bucket": band[keep].reshape(-1),
                                                       "ord": np.repeat(rep_ords[keep], bands)}))
                scratch.execute("INSERT INTO kept_bands SELECT * FROM new_kept")
                for o, k in zip(reps, kept):
                    if k:
                        cache.put(o, sets[o])
                done += len(batch)
                progress(done, f"{dropped:,} dropped, {pairs_verified:,} pairs verified")
        finally:
            scratch.close()
        stage.rows.close()
        context.log.info(f"sft_deduped: {n:,} rows, {exact_copies:,} exact copies, {dropped:,} dropped, "
                         f"LSH bands={bands}×{rows_per_band}, {pairs_verified:,} pairs verified")
        with warehouse.connect() as con:
            con.execute(
                f"COPY (SELECT d.id AS row_id, 'near_duplicate' AS reason, "
                f"'kept=' || k.id || ' jaccard=' || printf('%.3f', x.jaccard) AS detail "
                f"FROM read_parquet(?) x JOIN sft_candidates d ON d.cand_order = x.ord "
                f"JOIN sft_candidates k ON k.cand_order = x.kept_ord ORDER BY x.ord) TO '{stage.ledger.path}.dup' "
                "(FORMAT parquet)", [str(stage.rows.path)])
        warehouse.replace_table(
            table="sft_deduped", asset="sft_deduped", ledger_path=Path(f"{stage.ledger.path}.dup"),
            run_id=context.run.run_id,
            # An anti-join in the candidates' own (cand_order) order, not a sort: a sort of every row with its
            # messages needs far more than a small memory_limit (measured: out of memory at 64 MB on 20k rows).
            select_sql="SELECT c.* FROM sft_candidates c ANTI JOIN read_parquet(?) d ON c.cand_order = d.ord",
            params=[str(stage.rows.path)])
    written = _count(warehouse, "sft_deduped")
    ledger = warehouse.ledger_counts("sft_deduped")
    lsh = {"ngram": config.ngram, "threshold": config.threshold, "num_perm": config.num_perm, "bands": bands,
           "rows_per_band": rows_per_band, "p_candidate_at_threshold": round(
               1 - (1 - config.threshold ** rows_per_band) ** bands, 6)}
    warehouse.record_stage("sft_deduped", context.run.run_id, lsh,
                           {"rows_in": n, "dropped": dropped, "exact_copies": exact_copies})
    examples = warehouse.fetch(
        "SELECT l.row_id, l.detail, c.messages[len(c.messages)].content FROM row_ledger l "
        "JOIN sft_candidates c ON c.id = l.row_id WHERE l.asset = 'sft_deduped' ORDER BY l.row_id LIMIT 5")
    elapsed = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "dagster/column_schema": _schema(),
            "rows_in": n,
            "dropped": dropped,
            "dropped_share": round(dropped / n, 4) if n else 0.0,
            "exact_copies": exact_copies,
            "lsh": dg.MetadataValue.json(lsh),
            "candidate_pairs": pairs_total,
            "pairs_verified": pairs_verified,
            "kept_sets_reread": cache.misses,
            "rows_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
            "jaccard_of_dropped": dg.MetadataValue.md(histogram_markdown(dict(sorted(sims.items())), "jaccard ≥")),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "examples_dropped": dg.MetadataValue.md(markdown_table(["row", "detail", "response"], examples, 160)),
            "rows_by_source": dg.MetadataValue.md(_breakdown(warehouse, "sft_deduped")),
            "preview": dg.MetadataValue.md(_preview(warehouse, "sft_deduped")),
        },
        check_results=[checks.rows_conserved(n, written, sum(ledger.values()))],
    )


# ---- sft_decontaminated ---------------------------------------------------------------------------------------

class DecontamConfig(dg.Config):
    ngram: int = Field(default=8, description="word n-gram length of step 1 (open-r1: 8)")
    max_item_df: int = Field(default=3, description="ignore n-grams shared by more than this many eval items")
    min_shared: int = Field(default=3, description="n-grams a prompt must share with one eval item")
    fuzzy_threshold: float = Field(default=80.0, description="step 2: rapidfuzz ratio >= this (the card: 80)")
    fuzzy_workers: int = Field(default=0, description="threads for step 2 (0 = one per CPU core); same answer")
    batch_rows: int = 2000


def eval_index_items(warehouse: Warehouse) -> list[decontam.EvalItem]:
    """Every eval item, indexed as its bare question and as question + options (or context + question)."""
    rows = warehouse.fetch("SELECT source, id, prompt, meta->>'question', meta->>'context' FROM eval_items "
                           "ORDER BY source, id") if warehouse.table_exists("eval_items") else []
    items = []
    for source, rid, prompt, question, context in rows:
        bare = question or (prompt[len(context):].strip() if context and prompt.startswith(context) else prompt)
        items.append(decontam.EvalItem(source, rid, tuple(dict.fromkeys([bare, prompt]))))
    return items


def contamination_rate(warehouse: Warehouse, table: str, index: decontam.NgramIndex,
                       batch_rows: int = 2000) -> tuple[int, int, list[str]]:
    """Re-run the 8-gram test over a stored table: (rows, contaminated rows, example ids)."""
    total, bad, examples = 0, 0, []
    for batch in warehouse.iter_ordered(table, ["cand_order", "id", "prompt"], "cand_order", batch_rows=batch_rows):
        total += len(batch)
        hits = index.match_batch([decontam.strip_boilerplate(r["prompt"]) for r in batch])
        for r, h in zip(batch, hits):
            if h is not None:
                bad += 1
                if len(examples) < 5:
                    examples.append(r["id"])
    return total, bad, examples


def _contamination_check(total: int, bad: int, examples: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=NO_CONTAMINATION, passed=bad == 0, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": total, "contaminated_rows": bad, "contamination_rate": round(bad / total, 6) if total else 0.0,
                  "examples": dg.MetadataValue.json(examples), "threshold": "contaminated_rows == 0"})


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=["sft_deduped", "eval_items"],
    check_specs=[
        dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_decontaminated", blocking=True,
                          description="Every deduped row is kept or ledgered with the eval item it matches."),
        dg.AssetCheckSpec(NO_CONTAMINATION, asset="sft_decontaminated", blocking=True,
                          description="Re-running the 8-gram test against all eval sets finds nothing."),
    ],
)
def sft_decontaminated(context: dg.AssetExecutionContext, config: DecontamConfig,
                       warehouse: Warehouse) -> dg.MaterializeResult:
    """Prompts that copy an eval item removed: step 1 shared word 8-grams, step 2 rapidfuzz ratio >= 80."""
    started = time.perf_counter()
    items = eval_index_items(warehouse)
    if not items:
        raise dg.Failure("eval_items is empty: materialize eval_items first (decontamination needs the eval sets)")
    ngram_index = decontam.NgramIndex(items, config.ngram, config.max_item_df, config.min_shared)
    fuzzy_texts, fuzzy_owner = [], []
    for k, item in enumerate(items):
        for t in item.texts:
            fuzzy_texts.append(t)
            fuzzy_owner.append(k)
    fuzzy_index = decontam.FuzzyIndex(fuzzy_texts, config.fuzzy_threshold)
    fuzzy_workers = config.fuzzy_workers or os.cpu_count() or 1
    context.log.info(f"eval index: {len(items):,} items, {len(ngram_index):,} {config.ngram}-grams "
                     f"({ngram_index.dropped_common:,} common ones left out), {len(fuzzy_texts):,} fuzzy texts "
                     f"({time.perf_counter() - started:.1f}s)")
    n = _count(warehouse, "sft_deduped")
    progress = Progress(context.log.info, "sft_decontaminated", n)
    by_set: Counter = Counter()
    by_step: Counter = Counter()
    examples = []
    done = 0
    with staged_partition(warehouse, "sft_decontaminated", "all", pa.schema([("id", pa.string())])) as stage:
        for batch in warehouse.iter_ordered("sft_deduped", ["cand_order", "id", "prompt"], "cand_order",
                                            batch_rows=config.batch_rows):
            stripped = [decontam.strip_boilerplate(r["prompt"]) for r in batch]
            hits = ngram_index.match_batch(stripped)
            rest = [k for k, h in enumerate(hits) if h is None]
            fuzzy_hits = fuzzy_index.match_batch([stripped[k] for k in rest], workers=fuzzy_workers)
            for r, h in zip(batch, hits):
                if h is not None:
                    stage.ledger.add({"row_id": r["id"], "reason": "contaminated_ngram",
                                      "detail": f"eval_set={h.eval_set} item={h.item_id} ngram={h.ngram!r}"})
                    by_set[h.eval_set] += 1
                    by_step["ngram"] += 1
                    if len(examples) < 5:
                        examples.append(("ngram", h.eval_set, r["prompt"], h.ngram))
            for k, fh in zip(rest, fuzzy_hits):
                if fh is not None:
                    item = items[fuzzy_owner[fh.eval_index]]
                    r = batch[k]
                    stage.ledger.add({"row_id": r["id"], "reason": "contaminated_fuzzy",
                                      "detail": f"eval_set={item.eval_set} item={item.item_id} score={fh.score:.1f}"})
                    by_set[item.eval_set] += 1
                    by_step["fuzzy"] += 1
                    if len(examples) < 5:
                        examples.append(("fuzzy", item.eval_set, r["prompt"], f"{fh.score:.1f}"))
            done += len(batch)
            progress(done)
        stage.close()
        warehouse.replace_table(
            table="sft_decontaminated", asset="sft_decontaminated", ledger_path=stage.ledger.path,
            run_id=context.run.run_id,
            select_sql="SELECT * FROM sft_deduped WHERE id NOT IN (SELECT row_id FROM read_parquet(?)) "
                       "ORDER BY cand_order", params=[str(stage.ledger.path)])
    written = _count(warehouse, "sft_decontaminated")
    ledger = warehouse.ledger_counts("sft_decontaminated")
    total, bad, bad_examples = contamination_rate(warehouse, "sft_decontaminated", ngram_index, config.batch_rows)
    warehouse.record_stage("sft_decontaminated", context.run.run_id, config.model_dump(),
                           {"rows_in": n, "eval_items": len(items), "removed_by_step": dict(by_step),
                            "removed_by_eval_set": dict(by_set)})
    elapsed = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "dagster/column_schema": _schema(),
            "rows_in": n,
            "removed_by_step": dg.MetadataValue.json(dict(by_step)),
            "removed_by_eval_set": dg.MetadataValue.md(histogram_markdown(dict(by_set.most_common()), "eval set")),
            "eval_items": len(items),
            "indexed_ngrams": len(ngram_index),
            "common_ngrams_left_out": ngram_index.dropped_common,
            "fuzzy_pairs_brute_force": len(fuzzy_texts) * (n - by_step["ngram"]),
            "fuzzy_pairs_in_length_window": fuzzy_index.pairs_in_window,
            "fuzzy_pairs_lcs": fuzzy_index.pairs_lcs,
            "fuzzy_pairs_early_exit": fuzzy_index.pairs_early_exit,
            "fuzzy_pairs_scored": fuzzy_index.pairs_scored,
            "fuzzy_pairs_transposed": fuzzy_index.pairs_transposed,
            "fuzzy_pairs_shared_lane": fuzzy_index.pairs_shared,
            "fuzzy_lcs_rows_read_share": round(fuzzy_index.lcs_rows_read / fuzzy_index.lcs_rows_total, 4)
            if fuzzy_index.lcs_rows_total else 0.0,
            "parameters": dg.MetadataValue.json(config.model_dump()),
            "rows_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
            "examples_removed": dg.MetadataValue.md(markdown_table(["step", "eval set", "prompt", "evidence"], examples, 160)),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "rows_by_source": dg.MetadataValue.md(_breakdown(warehouse, "sft_decontaminated")),
            "preview": dg.MetadataValue.md(_preview(warehouse, "sft_decontaminated")),
        },
        check_results=[checks.rows_conserved(n, written, sum(ledger.values())),
                       _contamination_check(total, bad, bad_examples)],
    )


# ---- sft_final ------------------------------------------------------------------------------------------------

class FinalConfig(dg.Config):
    validation_fraction: float = Field(default=0.0, description="held-out share per source (0 = train only)")
    validation_max_per_source: int = Field(default=500, description="cap on held-out rows per source")
    seed: int = 0
    min_rows: int = Field(default=1, description="ERROR below this many rows (the card: 2,197,741 at full scale)")
    max_rows: int | None = Field(default=None, description="WARN above this many rows")
    ngram: int = 8
    max_item_df: int = 3
    min_shared: int = 3


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
                          description="Re-running the 8-gram test against all eval sets finds nothing."),
    ],
)
def sft_final(context: dg.AssetExecutionContext, config: FinalConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """The final split: train, plus an optional held-out validation split stratified by source."""
    # Per source, the rows with the smallest hash(seed, id) are held out: deterministic and stratified.
    warehouse.replace_table(
        table="sft_final", asset="sft_final", ledger_path=None, run_id=context.run.run_id,
        select_sql="SELECT * EXCLUDE (_rank, _n), CASE WHEN _rank <= least(floor(_n * ?), ?) THEN 'validation' "
                   "ELSE 'train' END AS split FROM (SELECT *, row_number() OVER (PARTITION BY source "
                   "ORDER BY hash(? || id)) AS _rank, count(*) OVER (PARTITION BY source) AS _n "
                   "FROM sft_decontaminated) ORDER BY cand_order",
        params=[config.validation_fraction, config.validation_max_per_source, str(config.seed)])
    total = _count(warehouse, "sft_final")
    splits = dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1 ORDER BY 1"))
    by_section = warehouse.fetch("SELECT section, count(*) FILTER (WHERE split = 'train'), "
                                 "count(*) FILTER (WHERE split = 'validation') FROM sft_final GROUP BY 1 ORDER BY 1")
    by_source = warehouse.fetch("SELECT section, source, count(*) FILTER (WHERE split = 'train'), "
                                "count(*) FILTER (WHERE split = 'validation') FROM sft_final GROUP BY ALL ORDER BY 1, 2")
    dup_groups, dup_rows = warehouse.fetch_one(
        "SELECT count(*), coalesce(sum(c), 0) FROM (SELECT count(*) AS c FROM sft_final "
        "GROUP BY messages[len(messages)].content HAVING count(*) > 1)")
    empty = warehouse.fetch_one(
        "SELECT count(*) FROM sft_final WHERE len(messages) = 0 OR messages[len(messages)].role <> 'assistant' "
        "OR list_bool_or(list_transform(messages, lambda m: m.content IS NULL OR trim(m.content) = ''))")[0]
    candidates = sum(_count(warehouse, t) for t, _, _ in SECTION_INPUTS)
    ledgered = {a: sum(warehouse.ledger_counts(a).values()) for a in CLEANING_ASSETS}
    conserved = candidates == total + sum(ledgered.values())
    items = eval_index_items(warehouse)
    rate = contamination_rate(warehouse, "sft_final", decontam.NgramIndex(
        items, config.ngram, config.max_item_df, config.min_shared))
    too_few = total < config.min_rows
    too_many = config.max_rows is not None and total > config.max_rows
    per_section = {s: t + v for s, t, v in by_section}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total,
            "dagster/column_schema": dg.TableSchema(columns=[*_schema().columns,
                                                             dg.TableColumn("split", "VARCHAR", description="train | validation")]),
            "splits": dg.MetadataValue.json(splits),
            "rows_by_section": dg.MetadataValue.md(markdown_table(["section", "train", "validation"], by_section)),
            "rows_by_source": dg.MetadataValue.md(markdown_table(["section", "source", "train", "validation"], by_source)),
            "section_plot": dg.MetadataValue.md(histogram_png_markdown(per_section, "final rows by section", "section")
                                                if per_section else "_(no rows)_"),
            "cleaning_funnel": dg.MetadataValue.md(_funnel_markdown(warehouse, candidates, total)),
            "preview": dg.MetadataValue.md(_preview(warehouse, "sft_final")),
        },
        check_results=[
            dg.AssetCheckResult(check_name=TOTAL_IN_BOUNDS, passed=not (too_few or too_many),
                                severity=dg.AssetCheckSeverity.ERROR if too_few else dg.AssetCheckSeverity.WARN,
                                metadata={"rows": total, "min_rows": config.min_rows,
                                          "max_rows": config.max_rows if config.max_rows is not None else "none"}),
            dg.AssetCheckResult(check_name=NO_DUPLICATE_RESPONSES, passed=dup_groups == 0,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"duplicate_groups": int(dup_groups), "rows_in_duplicate_groups": int(dup_rows)}),
            dg.AssetCheckResult(check_name=NO_EMPTY_MESSAGES, passed=empty == 0, severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"rows_with_empty_or_unanswered_messages": int(empty)}),
            dg.AssetCheckResult(check_name=CONSERVED_THROUGH_CLEANING, passed=conserved,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"section_rows": candidates, "final_rows": total,
                                          **{f"ledgered_{a}": v for a, v in ledgered.items()},
                                          "unaccounted": candidates - total - sum(ledgered.values())}),
            _contamination_check(*rate),
        ],
    )


# ---- sft_export -----------------------------------------------------------------------------------------------

class ExportConfig(dg.Config):
    out_dir: str | None = Field(default=None, description="default: <warehouse dir>/export")
    shard_rows: int = Field(default=100_000, description="rows per Parquet shard")
    dataset_name: str = "II-Medical-Reasoning-SFT (reproduction)"


EXPORT_COLUMNS = "id, source, section, messages, prompt, gold_answer, language, origin, provenance::VARCHAR AS provenance"


@dg.asset(group_name="cleaning", kinds={"parquet", "json"}, deps=["sft_final"])
def sft_export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Parquet shards that `datasets` loads (a `messages` column), the same rows as JSONL, and a dataset card
    (README.md) written from the real counts, the parameters each stage actually used, and the ledger."""
    out = Path(config.out_dir).expanduser() if config.out_dir else warehouse.database.parent / "export"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    files: dict[str, list[str]] = {}
    counts = dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1"))
    with warehouse.connect() as con:
        for split, n in sorted(counts.items()):
            shards = max(1, -(-n // config.shard_rows))
            files[split] = []
            for k in range(shards):
                name = f"data/{split}-{k:05d}-of-{shards:05d}.parquet"
                con.execute(f"COPY (SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order "
                            f"LIMIT ? OFFSET ?) TO '{tmp / name}' (FORMAT parquet, COMPRESSION zstd)",
                            [split, config.shard_rows, k * config.shard_rows])
                files[split].append(name)
            con.execute(f"COPY (SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order) "
                        f"TO '{tmp / f'{split}.jsonl'}' (FORMAT json)", [split])
    card = dataset_card(warehouse, config.dataset_name, files)
    (tmp / "README.md").write_text(card)
    # swap the finished export in (a failed run leaves the previous export in place)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": dg.MetadataValue.json(counts),
        "files": dg.MetadataValue.json(sizes),
        "dataset_card": dg.MetadataValue.md(card),
    })


def dataset_card(warehouse: Warehouse, name: str, files: dict[str, list[str]]) -> str:
    by_section = warehouse.fetch("SELECT section, count(*) FILTER (WHERE split = 'train'), "
                                 "count(*) FILTER (WHERE split = 'validation') FROM sft_final GROUP BY 1 ORDER BY 1")
    by_source = warehouse.fetch("SELECT section, source, count(*) FROM sft_final GROUP BY ALL ORDER BY 1, 2")
    ledger = warehouse.fetch(f"SELECT asset, reason, count(*) FROM {LEDGER_TABLE} GROUP BY ALL ORDER BY 1, 3 DESC")
    total = sum(t + v for _, t, v in by_section)
    lsh, dedup_md = warehouse.stage_record("sft_deduped")
    params, decon_md = warehouse.stage_record("sft_decontaminated")
    config_lines = "\n".join(f"  - split: {s}\n    path: \"{'data/' + s}-*.parquet\"" for s in files)
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
        f"# {name}",
        "",
        f"{total:,} chat samples (`messages`: user turn(s), then an assistant turn with `<think>` reasoning where "
        "there is reasoning), built by [iimed_assets](https://github.com/) from the public sources of the "
        "II-Medical-Reasoning-SFT recipe. Every count below was read from the warehouse when this card was written.",
        "",
        "## Counts",
        "",
        markdown_table(["section", "train", "validation"], by_section),
        "",
        markdown_table(["section", "source", "rows"], by_source),
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
        markdown_table(["stage", "reason", "rows"], ledger),
        "",
        "## Files",
        "",
        *[f"- `{f}`" for fs in files.values() for f in fs],
        *[f"- `{s}.jsonl`" for s in files],
        "",
    ]
    return "\n".join(lines)


CLEANING = [sft_candidates, sft_deduped, sft_decontaminated, sft_final, sft_export]
