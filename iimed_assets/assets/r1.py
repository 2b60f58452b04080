"""Section 3: the R1-trace domain filter.

r1_trace_rows ─► r1_prompt_embeddings[source] ─► r1_clusters ─► r1_cluster_domains ─► r1_medical_traces

Prompts are embedded (all-MiniLM-L6-v2), clustered with faiss K-means, each cluster is labelled by a classifier
vote over the 10 prompts nearest its centroid, and the traces of Medical/Biology clusters are kept; every
other trace goes to the ledger as `domain:<label>`. Algorithms live in core.clustering / core.domains.
"""

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from iimed_assets import checks
from iimed_assets.assets.common import GPU_POOL, histogram_markdown, histogram_png_markdown, markdown_table, \
    sample_column_schema, swap_checked
from iimed_assets.assets.stage_records import record_stage_run
from iimed_assets.core import clustering, domains
from iimed_assets.core.llm import UsageStats
from iimed_assets.core.schema import LEDGER_STAGE_SCHEMA
from iimed_assets.partitions import r1_trace_partitions
from iimed_assets.resources.embedder import Embedder
from iimed_assets.profiles import active_profile
from iimed_assets.resources.llm import LabelResult, RoleResource, usage_metadata
from iimed_assets.resources.llm.budget import StageBudget, stage_budget
from iimed_assets.resources.warehouse import Select, Swap, Warehouse

EMBEDDING_OK = "embedding_dim_and_norm"
EVERY_ROW_CLUSTERED = "every_row_clustered"
EVERY_CLUSTER_LABELLED = "every_cluster_labelled"
VOTE_AGREEMENT = "vote_agreement"
NORM_TOLERANCE = 1e-3
PROFILE = active_profile()


def _write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path, compression="zstd")
    return path


def _empty_ledger(tmp: Path) -> Path:
    return _write_parquet(tmp / "ledger.parquet", LEDGER_STAGE_SCHEMA.empty_table())


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    values = column.combine_chunks()
    return np.asarray(values.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


# ---- r1_prompt_embeddings ---------------------------------------------------------------------------------

@dg.asset(
    partitions_def=r1_trace_partitions,
    group_name="r1",
    kinds={"duckdb", "pytorch"},
    deps=["r1_trace_rows"],
    pool=GPU_POOL,
    check_specs=[
        dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="r1_prompt_embeddings", blocking=True,
                          description="Every R1 prompt of the partition has exactly one embedding."),
        dg.AssetCheckSpec(EMBEDDING_OK, asset="r1_prompt_embeddings", blocking=True,
                          description="Every stored vector has the model's dimension and unit L2 norm."),
    ],
)
def r1_prompt_embeddings(context: dg.AssetExecutionContext, warehouse: Warehouse,
                         embedder: Embedder) -> dg.MaterializeResult:
    """all-MiniLM-L6-v2 embeddings (L2-normalised float32) of every R1 prompt, one partition per R1 source."""
    source = context.partition_key
    rows = warehouse.fetch("SELECT id, prompt FROM r1_trace_rows WHERE source = ? ORDER BY id", [source]) \
        if warehouse.table_exists("r1_trace_rows") else []
    ids = [r[0] for r in rows]
    device, precision, batch = embedder.resolved_device(), embedder.resolved_precision(), embedder.resolved_batch_size()
    context.log.info(f"r1_prompt_embeddings[{source}]: embedding {len(ids):,} prompts with "
                     f"{embedder.model_id} on {device} ({precision}, batch {batch})")

    def progress(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        context.log.info(f"r1_prompt_embeddings[{source}]: {done:,}/{total:,} prompts, {rate:,.1f}/s, "
                         f"eta {(total - done) / rate if rate else 0:,.0f}s")

    started = time.perf_counter()
    vectors = embedder.encode([r[1] for r in rows], progress=progress) if rows else np.zeros((0, embedder.dimension()),
                                                                                              np.float32)
    seconds = time.perf_counter() - started
    dim = vectors.shape[1]
    with warehouse.staging_folder(f"r1_emb-{source}") as tmp:
        table = pa.table({
            "source": pa.array([source] * len(ids), pa.string()),
            "id": pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        })
        path = _write_parquet(tmp / "rows.parquet", table)
        results = swap_checked(context, warehouse, Swap(
            "r1_prompt_embeddings", Select("r1_prompt_embeddings", f"SELECT source, id, embedding::FLOAT[{dim}] AS "
                                                                   "embedding FROM read_parquet(?)", [str(path)]),
            partition=source, ledger_path=_empty_ledger(tmp)),
            lambda staged: _embedding_checks(warehouse, staged.table, source, dim, len(ids)))
    stored = warehouse.fetch_one("SELECT count(*) FROM r1_prompt_embeddings WHERE source = ?", [source])[0]
    rate = len(ids) / seconds if seconds > 0 else 0.0
    record_stage_run(context, warehouse, settings={"embedding_model": embedder.model_id, "precision": precision,
                                                   "dimension": dim},
                     runtime={"device": device, "batch_size": batch,
                              "tokenize_workers": embedder.resolved_tokenize_workers()},
                     stats={"rows": int(stored), "embed_s": round(seconds, 2), "prompts_per_s": round(rate, 1)})
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(stored),
            "dagster/column_schema": dg.TableSchema(columns=[
                dg.TableColumn("source", "VARCHAR"), dg.TableColumn("id", "VARCHAR", description="r1_trace_rows.id"),
                dg.TableColumn("embedding", f"FLOAT[{dim}]", description="L2-normalised sentence embedding")]),
            "model": embedder.model_id,
            "device": device,
            "precision": precision,
            "batch_size": batch,
            "tokenize_workers": embedder.resolved_tokenize_workers(),
            "dimension": dim,
            "embed_seconds": round(seconds, 2),
            "prompts_per_s": round(rate, 1),
            "preview": dg.MetadataValue.md(markdown_table(
                ["id", "prompt", "embedding[:4]"],
                [(i, p, ", ".join(f"{v:.3f}" for v in vectors[k, :4])) for k, (i, p) in enumerate(rows[:5])], 120)),
        },
        check_results=results,
    )


def _embedding_checks(warehouse: Warehouse, table: str, source: str, dim: int,
                      prompts: int) -> list[dg.AssetCheckResult]:
    """r1_prompt_embeddings' checks on `table` (the staged vectors, before the swap)."""
    stored, bad_dim, min_norm, max_norm = warehouse.fetch_one(
        "SELECT count(*), count(*) FILTER (WHERE array_length(embedding) <> ?), "
        "min(sqrt(array_inner_product(embedding, embedding))), max(sqrt(array_inner_product(embedding, embedding))) "
        f"FROM {table} WHERE source = ?", [dim, source])
    norms_ok = stored == 0 or (abs(min_norm - 1) <= NORM_TOLERANCE and abs(max_norm - 1) <= NORM_TOLERANCE)
    return [
        checks.rows_conserved(prompts, int(stored), 0),
        dg.AssetCheckResult(check_name=EMBEDDING_OK, passed=bad_dim == 0 and norms_ok,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"dimension": dim, "wrong_dimension": int(bad_dim),
                                      "min_norm": float(min_norm or 0), "max_norm": float(max_norm or 0),
                                      "threshold": f"|norm - 1| <= {NORM_TOLERANCE}"}),
    ]


# ---- r1_clusters ------------------------------------------------------------------------------------------

class ClusterConfig(dg.Config):
    k: int | None = Field(default=PROFILE.kmeans_k, description="clusters (the profile's: card 50,000; laptop none, "
                                                              "i.e. about prompts_per_cluster prompts per cluster)")
    prompts_per_cluster: int = Field(default=clustering.PROMPTS_PER_CLUSTER, description="rule for the default K")
    method: str = Field(default="auto", description="auto | flat | two_level (auto: flat below "
                                                    f"n_train*K = {clustering.FLAT_WORK_LIMIT:.0e})")
    niter: int = Field(default=20, description="K-means iterations (flat, and the coarse level of two-level)")
    fine_niter: int = Field(default=clustering.FINE_NITER, description="two-level: Lloyd iterations in each group")
    nprobe: int = Field(default=clustering.NPROBE, description="two-level: coarse groups searched per row")
    refine: int = Field(default=clustering.REFINE, description="two-level: global Lloyd iterations after the "
                                                               "per-group fits")
    seed: int = 0
    backend: str = Field(default="auto", description="auto | faiss | torch. auto: faiss-gpu when installed, else flat "
                                                     "K-means in torch on CUDA at the full K, else faiss on the CPU")
    compare_subset: int = Field(default=20_000, description="when two-level runs, also fit flat K-means on this many "
                                                            "rows (same K per row) and report both objectives; 0: skip")


@dg.asset(
    group_name="r1",
    kinds={"duckdb", "faiss", "torch"},
    deps=["r1_prompt_embeddings"],
    pool=GPU_POOL,
    check_specs=[dg.AssetCheckSpec(EVERY_ROW_CLUSTERED, asset="r1_clusters", blocking=True,
                                   description="Every embedded prompt has exactly one cluster id in [0, K).")],
)
def r1_clusters(context: dg.AssetExecutionContext, config: ClusterConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """K-means over every R1 prompt embedding: per row its cluster and squared L2 distance to the centroid;
    centroids (with sizes) in the side table r1_centroids."""
    arrow, x = _read_embeddings(warehouse)
    n = len(x)
    k = clustering.choose_k(n, config.k, config.prompts_per_cluster)
    backend = clustering.select_backend(config.backend)
    method = ("flat" if backend.kind == "torch" else clustering.choose_method(n, k, config.method)) if n else "none"
    context.log.info(f"r1_clusters: {n:,} prompts, K={k:,} ({'configured' if config.k else f'~{config.prompts_per_cluster}/cluster'}), "
                     f"{method} k-means on {backend.name}")
    result = clustering.kmeans(x, k, method=config.method, niter=config.niter, seed=config.seed, backend=backend,
                               nprobe=config.nprobe, refine=config.refine, fine_niter=config.fine_niter,
                               log=context.log.info)
    comparison = {}
    if result.method == "two_level" and config.compare_subset:
        comparison = _compare_with_flat(x, result, config, backend)
        context.log.info(f"r1_clusters: two-level vs flat on a {comparison['rows']:,}-row subset: {comparison}")
    with warehouse.staging_folder("r1_clusters") as tmp:
        results = swap_checked(context, warehouse, _cluster_swap(tmp, arrow, result, x.shape[1]),
                               lambda staged: [_clustered_check(warehouse, staged.table, n, result.k)])
    params = _cluster_settings(config, result, backend)
    record_stage_run(context, warehouse, settings=params,
                     stats={"rows": n, "objective": round(result.objective, 6), "kmeans_s": round(result.seconds, 2),
                            **({"flat_comparison": comparison} if comparison else {})})
    stored = warehouse.fetch_one("SELECT count(*) FROM r1_clusters")[0] if n else 0
    return dg.MaterializeResult(metadata=_cluster_metadata(int(stored), result, params, backend, comparison),
                                check_results=results)


def _read_embeddings(warehouse: Warehouse) -> tuple[pa.Table | None, np.ndarray]:
    """(source, id, embedding) of every embedded R1 prompt in a stable order, and the vectors as float32."""
    if not warehouse.table_exists("r1_prompt_embeddings"):
        return None, np.zeros((0, 384), np.float32)
    with warehouse.connect() as con:
        arrow = con.sql("SELECT source, id, embedding FROM r1_prompt_embeddings ORDER BY source, id").to_arrow_table()
    dim = arrow.schema.field("embedding").type.list_size
    return arrow, _vectors(arrow.column("embedding"), dim) if arrow.num_rows else np.zeros((0, dim), np.float32)


def _cluster_swap(tmp: Path, arrow: pa.Table | None, result: clustering.KMeansResult, dim: int) -> Swap:
    """Stage every row's cluster and the centroids (with sizes) as Parquet; the swap of r1_clusters + r1_centroids."""
    n = len(result.assignment)
    rows_path = _write_parquet(tmp / "rows.parquet", pa.table({
        "source": arrow.column("source") if n else pa.array([], pa.string()),
        "id": arrow.column("id") if n else pa.array([], pa.string()),
        "cluster_id": pa.array(result.assignment.astype(np.int32)),
        "distance": pa.array(result.distance.astype(np.float32)),
    }))
    cent_path = _write_parquet(tmp / "centroids.parquet", pa.table({
        "cluster_id": pa.array(np.arange(result.k, dtype=np.int32)),
        "size": pa.array((result.sizes() if n else np.zeros(0, np.int64)).astype(np.int64)),
        "centroid": pa.FixedSizeListArray.from_arrays(pa.array(result.centroids.reshape(-1), pa.float32()), dim),
    }))
    return Swap("r1_clusters", Select("r1_clusters", "SELECT * FROM read_parquet(?)", [str(rows_path)]),
                side_tables=[Select("r1_centroids", f"SELECT cluster_id, size, centroid::FLOAT[{dim}] AS centroid "
                                                    "FROM read_parquet(?)", [str(cent_path)])])


def _cluster_settings(config: ClusterConfig, result: clustering.KMeansResult,
                      backend: clustering.KMeansBackend) -> dict:
    """What decided the clusters (stage_runs)."""
    return {"k": result.k, "k_rule": f"configured {config.k}" if config.k else
            f"round(n / {config.prompts_per_cluster})", "method": result.method, "niter": config.niter,
            "seed": config.seed, "max_points_per_centroid": clustering.MAX_POINTS_PER_CENTROID,
            "backend": backend.name,
            **({"fine_niter": config.fine_niter, "nprobe": config.nprobe, "refine": config.refine}
               if result.method == "two_level" else {})}


def _cluster_metadata(stored: int, result: clustering.KMeansResult, params: dict, backend: clustering.KMeansBackend,
                      comparison: dict) -> dict:
    sizes = result.sizes() if len(result.assignment) else np.zeros(0, np.int64)
    buckets = _size_buckets(sizes)
    return {
        "dagster/row_count": stored,
        "dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn("source", "VARCHAR"), dg.TableColumn("id", "VARCHAR"),
            dg.TableColumn("cluster_id", "INTEGER"),
            dg.TableColumn("distance", "FLOAT", description="squared L2 to the centroid (2 - 2 cos)")]),
        "k": result.k,
        "k_rule": params["k_rule"],
        "method": result.method,
        "backend": backend.name,
        **({"score_dtype": result.details["score_dtype"]} if "score_dtype" in result.details else {}),
        "objective_mean_sq_distance": round(result.objective, 6),
        "train_points": result.train_points,
        "seconds": round(result.seconds, 2),
        **({"coarse_k": result.coarse_k} if result.coarse_k else {}),
        **({"kmeans_details": dg.MetadataValue.json(result.details)} if result.details else {}),
        **({"two_level_vs_flat": dg.MetadataValue.json(comparison)} if comparison else {}),
        "cluster_size_min": int(sizes.min()) if len(sizes) else 0,
        "cluster_size_median": float(np.median(sizes)) if len(sizes) else 0.0,
        "cluster_size_max": int(sizes.max()) if len(sizes) else 0,
        "cluster_sizes": dg.MetadataValue.md(
            histogram_markdown(buckets, "cluster size") + "\n\n" +
            (histogram_png_markdown(buckets, "clusters by size", "prompts in cluster") if buckets else "")),
    }


def _clustered_check(warehouse: Warehouse, table: str, n: int, k: int) -> dg.AssetCheckResult:
    """Every embedded prompt has one cluster id in [0, K), in `table` (the staged assignment, before the swap)."""
    missing, out_of_range, stored = warehouse.fetch_one(
        f"SELECT (SELECT count(*) FROM r1_prompt_embeddings e ANTI JOIN {table} c ON c.id = e.id AND "
        "c.source = e.source), count(*) FILTER (WHERE cluster_id IS NULL OR cluster_id < 0 OR cluster_id >= ?), "
        f"count(*) FROM {table}", [k]) if n else (0, 0, 0)
    return dg.AssetCheckResult(
        check_name=EVERY_ROW_CLUSTERED, passed=missing == 0 and out_of_range == 0 and stored == n,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"embedded_rows": n, "clustered_rows": int(stored), "rows_without_cluster": int(missing),
                  "cluster_id_out_of_range": int(out_of_range), "k": k})


def _size_buckets(sizes: np.ndarray) -> dict[str, int]:
    if not len(sizes):
        return {}
    edges = [0, 1, 2, 5, 10, 20, 40, 80, 160, 320, 10**12]
    labels = ["0", "1", "2-4", "5-9", "10-19", "20-39", "40-79", "80-159", "160-319", "320+"]
    counts = np.histogram(sizes, bins=edges)[0]
    return {label: int(c) for label, c in zip(labels, counts) if c}


def _compare_with_flat(x: np.ndarray, result: clustering.KMeansResult, config: ClusterConfig,
                      backend: clustering.KMeansBackend) -> dict:
    """Flat vs two-level K-means on a random subset, with K scaled to keep the same rows per cluster."""
    rng = np.random.default_rng(config.seed)
    m = min(len(x), config.compare_subset)
    subset = x[np.sort(rng.choice(len(x), size=m, replace=False))]
    k_sub = max(1, round(result.k * m / len(x)))
    flat = clustering.kmeans(subset, k_sub, method="flat", niter=config.niter, seed=config.seed, backend=backend)
    two = clustering.kmeans(subset, k_sub, method="two_level", niter=config.niter, seed=config.seed, backend=backend,
                            nprobe=config.nprobe, refine=config.refine, fine_niter=config.fine_niter)
    return {"rows": m, "k": k_sub, "flat_objective": round(flat.objective, 6),
            "two_level_objective": round(two.objective, 6),
            "two_level_worse_by": round(two.objective / flat.objective - 1, 4) if flat.objective else 0.0,
            "flat_seconds": round(flat.seconds, 2), "two_level_seconds": round(two.seconds, 2)}


# ---- r1_cluster_domains -----------------------------------------------------------------------------------

DOMAIN_LABELS_SCHEMA = pa.schema([
    ("cluster_id", pa.int32()), ("domain", pa.string()), ("keep", pa.bool_()), ("agreement", pa.float64()),
    ("voters", pa.int32()), ("votes", pa.string()), ("tie_break", pa.string()), ("size", pa.int64()),
    ("mixed", pa.bool_()), ("per_prompt", pa.bool_())])
DOMAIN_VOTES_SCHEMA = pa.schema([("cluster_id", pa.int32()), ("rank", pa.int64()), ("source", pa.string()),
                                 ("id", pa.string()), ("label", pa.string()), ("answer", pa.string())])
PROMPT_DOMAINS_SCHEMA = pa.schema([("cluster_id", pa.int32()), ("source", pa.string()), ("id", pa.string()),
                                   ("label", pa.string())])
DOMAIN_COLUMNS = [
    dg.TableColumn("cluster_id", "INTEGER"), dg.TableColumn("domain", "VARCHAR"),
    dg.TableColumn("keep", "BOOLEAN", description="Medical or Biology"),
    dg.TableColumn("agreement", "DOUBLE", description="share of voters choosing the label"),
    dg.TableColumn("voters", "INTEGER"), dg.TableColumn("votes", "JSON", description="label -> count"),
    dg.TableColumn("tie_break", "VARCHAR", description="how a tie was broken, empty if none"),
    dg.TableColumn("size", "BIGINT", description="prompts in the cluster"),
    dg.TableColumn("mixed", "BOOLEAN", description="voters split between keep and drop domains"),
    dg.TableColumn("per_prompt", "BOOLEAN", description="every prompt classified (r1_prompt_domains); their own "
                                                        "labels decide, not the majority")]


class DomainConfig(checks.LLMFailureBounds):
    voters: int = Field(default=PROFILE.domain_voters, description="prompts nearest each centroid that vote")
    max_tokens: int = Field(default=PROFILE.domain_max_tokens, description="an LLM classifier's answer budget (one "
                                                                           "domain name, constrained)")
    temperature: float = 0.0
    seed: int = 0
    min_median_agreement: float = Field(default=0.6, description="WARN when the median vote agreement is lower")
    per_prompt_budget: float = Field(
        default=PROFILE.per_prompt_budget,
        description="mixed clusters (voters split between Medical/Biology and other domains) get every prompt "
                    "classified, within this many extra classifications per voter; 0 keeps the recipe's pure "
                    "cluster-majority labels")


@dataclass
class _Labelled:
    """The classifier's work on one set of prompts: labels, answers and usage, summed over calls."""

    stats: UsageStats = field(default_factory=UsageStats)
    structured: int = 0
    budget: StageBudget | None = None

    def label(self, classifier: RoleResource, config: DomainConfig, warehouse: Warehouse, log,
              prompts: list[str]) -> LabelResult:
        result = classifier.label(prompts, domains.DOMAIN_TASK, max_tokens=config.max_tokens,
                                  temperature=config.temperature, seed=config.seed, cache=warehouse, log=log,
                                  budget=self.budget)
        self.stats.merge(result.stats)
        self.structured += result.structured
        return result


@dg.asset(
    group_name="r1",
    kinds={"duckdb"},
    deps=["r1_clusters", "r1_trace_rows"],
    pool=GPU_POOL,
    check_specs=[
        dg.AssetCheckSpec(EVERY_CLUSTER_LABELLED, asset="r1_cluster_domains", blocking=True,
                          description="Every non-empty cluster has a label and its voters' labels are stored."),
        dg.AssetCheckSpec(VOTE_AGREEMENT, asset="r1_cluster_domains", blocking=False,
                          description="WARN when the median share of voters agreeing with their cluster's label is low."),
        checks.llm_failure_spec("r1_cluster_domains", "classifier"),
    ],
)
def r1_cluster_domains(context: dg.AssetExecutionContext, config: DomainConfig, warehouse: Warehouse,
                       classifier: RoleResource) -> dg.MaterializeResult:
    """One domain per cluster: the `classifier` labels the prompts nearest the centroid, the majority labels it.
    Votes per prompt are in the side table r1_domain_votes."""
    voters = warehouse.fetch(
        "SELECT c.cluster_id, c.rank, c.source, c.id, t.prompt FROM (SELECT cluster_id, source, id, row_number() "
        "OVER (PARTITION BY cluster_id ORDER BY distance, source, id) AS rank FROM r1_clusters) c "
        "JOIN r1_trace_rows t ON t.id = c.id AND t.source = c.source WHERE c.rank <= ? ORDER BY c.cluster_id, c.rank",
        [config.voters])
    context.log.info(f"r1_cluster_domains: classifying {len(voters):,} prompts nearest their centroids "
                     f"with {classifier.model_id}")
    work = _Labelled(budget=stage_budget(context, classifier, warehouse, "classifier"))
    voted = work.label(classifier, config, warehouse, context.log.info, [v[4] for v in voters])
    vote_rows = [{"cluster_id": cid, "rank": rank, "source": source, "id": rid, "label": label, "answer": answer}
                 for (cid, rank, source, rid, _), label, answer in zip(voters, voted.labels, voted.answers)]
    by_cluster: dict[int, list[str]] = {}
    for v in vote_rows:
        by_cluster.setdefault(v["cluster_id"], []).append(v["label"])
    sizes = dict(warehouse.fetch("SELECT cluster_id, size FROM r1_centroids"))
    label_rows, refined, mixed = domains.vote_clusters(by_cluster, sizes, config.per_prompt_budget * len(voters))
    prompt_rows, per_prompt_calls = _classify_mixed_clusters(context, config, warehouse, classifier, work, refined,
                                                             vote_rows)

    def summarise(tables: dict[str, str]) -> _DomainSummary:
        return _DomainSummary.of(warehouse, label_rows, vote_rows, prompt_rows, mixed, len(refined), per_prompt_calls,
                                 round(config.per_prompt_budget * len(voters)), work.structured, tables)

    results = _write_domain_tables(context, warehouse, label_rows, vote_rows, prompt_rows, lambda staged: [
        *summarise({"r1_cluster_domains": staged.table, **staged.side}).checks(config.min_median_agreement),
        checks.llm_failure_share(work.stats if voters else None, config, "classifier")])
    record_stage_run(context, warehouse, roles={"classifier": classifier}, usage={"classifier": work.stats},
                     settings={**config.model_dump(exclude=checks.FAILURE_BOUNDS), "domains": list(domains.DOMAINS),
                               "keep": sorted(domains.KEEP_DOMAINS)},
                     stats={"clusters": len(label_rows), "classified_prompts": len(vote_rows),
                            "mixed_clusters": mixed, "per_prompt_clusters": len(refined),
                            "per_prompt_calls": per_prompt_calls})
    summary = summarise({})
    return dg.MaterializeResult(
        metadata={**summary.metadata(), **usage_metadata(work.stats if voters else None, classifier, "classifier")},
        check_results=results)


def _write_domain_tables(context, warehouse: Warehouse, label_rows: list[dict], vote_rows: list[dict],
                         prompt_rows: list[dict], evaluate) -> list[dg.AssetCheckResult]:
    """r1_cluster_domains with its side tables r1_domain_votes and r1_prompt_domains, in one swap, after
    `evaluate(staged)`'s blocking checks passed on the staged tables."""
    labels = [{**r, "votes": json.dumps(r["votes"])} for r in label_rows]
    with warehouse.staging_folder("r1_domains") as tmp:
        labels_path = _write_parquet(tmp / "labels.parquet",
                                     pa.Table.from_pylist(labels, schema=DOMAIN_LABELS_SCHEMA))
        prompts_path = _write_parquet(tmp / "prompts.parquet",
                                      pa.Table.from_pylist(prompt_rows, schema=PROMPT_DOMAINS_SCHEMA))
        votes_path = _write_parquet(tmp / "votes.parquet",
                                    pa.Table.from_pylist(vote_rows, schema=DOMAIN_VOTES_SCHEMA))
        return swap_checked(context, warehouse, Swap("r1_cluster_domains", Select(
            "r1_cluster_domains", "SELECT * EXCLUDE (votes), votes::JSON AS votes FROM read_parquet(?) "
                                  "ORDER BY cluster_id", [str(labels_path)]),
            side_tables=[Select("r1_domain_votes", "SELECT * FROM read_parquet(?) ORDER BY cluster_id, rank",
                                [str(votes_path)]),
                         Select("r1_prompt_domains", "SELECT * FROM read_parquet(?) ORDER BY cluster_id, source, id",
                                [str(prompts_path)])]), evaluate)


@dataclass
class _DomainSummary:
    """What r1_cluster_domains reports: the UI metadata and the two checks, from the stored tables."""

    label_rows: list[dict]
    prompt_labels: Counter
    rows_by_domain: Counter
    samples: list
    unlabelled: int
    prompts_unlabelled: int
    mixed: int
    per_prompt_clusters: int
    per_prompt_calls: int
    budget_calls: int
    structured: int

    @staticmethod
    def of(warehouse: Warehouse, label_rows, vote_rows, prompt_rows, mixed, per_prompt_clusters, per_prompt_calls,
           budget_calls, structured, tables: dict[str, str] | None = None) -> "_DomainSummary":
        """From the stored tables, or from their staged copies (`tables`: table -> staged name) before a swap."""
        t = {name: (tables or {}).get(name, name) for name in ("r1_cluster_domains", "r1_domain_votes",
                                                               "r1_prompt_domains")}
        unlabelled = warehouse.fetch_one(
            f"SELECT count(*) FROM r1_centroids c LEFT JOIN {t['r1_cluster_domains']} d USING (cluster_id) "
            "WHERE c.size > 0 AND (d.domain IS NULL OR d.voters = 0)")[0]
        # a per-prompt cluster needs a label for every one of its prompts
        prompts_unlabelled = warehouse.fetch_one(
            f"SELECT count(*) FROM r1_clusters c JOIN {t['r1_cluster_domains']} d USING (cluster_id) ANTI JOIN "
            f"{t['r1_prompt_domains']} p ON p.id = c.id AND p.source = c.source WHERE d.per_prompt")[0]
        rows_by_domain: Counter = Counter(p["label"] for p in prompt_rows)  # per-prompt clusters: own labels
        for r in label_rows:
            if not r["per_prompt"]:
                rows_by_domain[r["domain"]] += r["size"]
        samples = warehouse.fetch(
            f"SELECT d.domain, t.prompt FROM {t['r1_cluster_domains']} d JOIN {t['r1_domain_votes']} v "
            "ON v.cluster_id = d.cluster_id AND v.rank = 1 JOIN r1_trace_rows t ON t.id = v.id AND t.source = v.source "
            "QUALIFY row_number() OVER (PARTITION BY d.domain ORDER BY d.size DESC, d.cluster_id) <= 3 ORDER BY 1")
        return _DomainSummary(label_rows, Counter(v["label"] for v in vote_rows), rows_by_domain, samples,
                              int(unlabelled), int(prompts_unlabelled), mixed, per_prompt_clusters, per_prompt_calls,
                              budget_calls, structured)

    @property
    def median_agreement(self) -> float:
        agreements = [r["agreement"] for r in self.label_rows]
        return statistics.median(agreements) if agreements else 0.0

    def metadata(self) -> dict:
        clusters_by_domain = Counter(r["domain"] for r in self.label_rows)
        ties = [r for r in self.label_rows if r["tie_break"]]
        total_rows = sum(self.rows_by_domain.values())
        medical = sum(n for d, n in self.rows_by_domain.items() if domains.keep(d))
        domains_md = markdown_table(["domain", "clusters", "prompts"], [
            (d, clusters_by_domain[d], self.rows_by_domain[d]) for d, _ in self.rows_by_domain.most_common()])
        if self.rows_by_domain:
            domains_md += "\n\n" + histogram_png_markdown(dict(self.rows_by_domain.most_common()),
                                                          "prompts by cluster domain", "domain")
        return {
            "dagster/row_count": len(self.label_rows),
            "dagster/column_schema": dg.TableSchema(columns=DOMAIN_COLUMNS),
            "profile": PROFILE.name,
            "classified_prompts": sum(self.prompt_labels.values()),
            "structured_answers": self.structured,
            "median_agreement": round(self.median_agreement, 4),
            "ties_broken": len(ties),
            "medical_biology_clusters": sum(n for d, n in clusters_by_domain.items() if domains.keep(d)),
            "medical_biology_row_share": round(medical / total_rows, 4) if total_rows else 0.0,
            "mixed_clusters": self.mixed,
            "per_prompt_clusters": self.per_prompt_clusters,
            "per_prompt_calls": self.per_prompt_calls,
            "per_prompt_budget_calls": self.budget_calls,
            "mixed_clusters_over_budget": self.mixed - self.per_prompt_clusters,
            "unknown_answers": self.prompt_labels.get(domains.UNKNOWN, 0),
            "domains": dg.MetadataValue.md(domains_md),
            "prompt_labels": dg.MetadataValue.json(dict(self.prompt_labels.most_common())),
            "sample_prompts_by_domain": dg.MetadataValue.md(markdown_table(["domain", "prompt nearest a centroid"],
                                                                           self.samples, 200)),
            "ties": dg.MetadataValue.md(markdown_table(["cluster", "tie break"],
                                                       [(r["cluster_id"], r["tie_break"]) for r in ties[:10]])),
        }

    def checks(self, min_median_agreement: float) -> list[dg.AssetCheckResult]:
        return [
            dg.AssetCheckResult(check_name=EVERY_CLUSTER_LABELLED,
                                passed=self.unlabelled == 0 and self.prompts_unlabelled == 0,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"clusters": len(self.label_rows), "unlabelled_clusters": self.unlabelled,
                                          "per_prompt_clusters": self.per_prompt_clusters,
                                          "unlabelled_prompts_in_per_prompt_clusters": self.prompts_unlabelled}),
            dg.AssetCheckResult(check_name=VOTE_AGREEMENT, passed=self.median_agreement >= min_median_agreement,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"median_agreement": round(self.median_agreement, 4),
                                          "threshold": min_median_agreement,
                                          "unknown_answers": self.prompt_labels.get(domains.UNKNOWN, 0)}),
        ]


def _classify_mixed_clusters(context, config: DomainConfig, warehouse: Warehouse, classifier: RoleResource,
                             work: _Labelled, refined: set[int], vote_rows: list[dict]) -> tuple[list[dict], int]:
    """Every prompt of the chosen mixed clusters gets its own label: the voters' labels are reused, the other
    prompts are classified with the same task (cached like every LLM call)."""
    if not refined:
        return [], 0
    rest = warehouse.fetch(
        "SELECT c.cluster_id, c.source, c.id, t.prompt FROM (SELECT cluster_id, source, id, row_number() OVER "
        "(PARTITION BY cluster_id ORDER BY distance, source, id) AS rank FROM r1_clusters) c JOIN r1_trace_rows t "
        "ON t.id = c.id AND t.source = c.source WHERE c.rank > ? AND c.cluster_id IN (SELECT unnest(?::INTEGER[])) "
        "ORDER BY c.cluster_id, c.rank", [config.voters, sorted(refined)])
    context.log.info(f"r1_cluster_domains: {len(refined):,} mixed clusters get per-prompt labels: classifying "
                     f"{len(rest):,} more prompts")
    labelled = work.label(classifier, config, warehouse, context.log.info, [r[3] for r in rest])
    rows = [{"cluster_id": v["cluster_id"], "source": v["source"], "id": v["id"], "label": v["label"]}
            for v in vote_rows if v["cluster_id"] in refined]
    rows += [{"cluster_id": cid, "source": source, "id": rid, "label": label}
             for (cid, source, rid, _), label in zip(rest, labelled.labels)]
    return rows, len(rest)


# ---- r1_medical_traces ------------------------------------------------------------------------------------

R1_EXTRA_COLUMNS = {"cluster_id": ("INTEGER", "K-means cluster of the prompt"),
                    "domain": ("VARCHAR", "Medical or Biology: the cluster's vote, or in a mixed cluster the "
                                          "prompt's own label")}


@dg.asset(
    group_name="r1",
    kinds={"duckdb"},
    deps=["r1_trace_rows", "r1_cluster_domains"],
    check_specs=[dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="r1_medical_traces", blocking=True,
                                   description="Every R1 trace is kept or in the ledger as domain:<label>.")],
)
def r1_medical_traces(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """The R1 traces whose prompt's cluster is labelled Medical or Biology; the rest go to the ledger as
    domain:<label> (not_clustered when a trace has no cluster, e.g. its embedding partition is stale)."""
    missing = [t for t in ("r1_trace_rows", "r1_clusters", "r1_cluster_domains") if not warehouse.table_exists(t)]
    if missing:
        raise dg.Failure(f"r1_medical_traces needs {', '.join(missing)}: materialize the section-3 assets upstream first")
    keep = sorted(domains.KEEP_DOMAINS)
    per_prompt = warehouse.table_exists("r1_prompt_domains")
    # the decisive label: the cluster's majority, or in a per-prompt (mixed) cluster the prompt's own label
    label = "CASE WHEN d.per_prompt THEN p.label ELSE d.domain END" if per_prompt else "d.domain"
    joined = ("FROM r1_trace_rows t LEFT JOIN r1_clusters c ON c.id = t.id AND c.source = t.source "
              "LEFT JOIN r1_cluster_domains d ON d.cluster_id = c.cluster_id" +
              (" LEFT JOIN r1_prompt_domains p ON p.id = t.id AND p.source = t.source" if per_prompt else ""))
    how = ("CASE WHEN d.per_prompt THEN ' own label in mixed cluster' ELSE '' END" if per_prompt else "''")
    rows_in = warehouse.fetch_one("SELECT count(*) FROM r1_trace_rows")[0]
    results = swap_checked(context, warehouse, Swap(
        "r1_medical_traces", Select("r1_medical_traces", f"SELECT t.*, c.cluster_id, {label} AS domain {joined} "
                                    f"WHERE {label} IN (SELECT unnest(?::VARCHAR[])) ORDER BY t.source, t.id", [keep]),
        ledger_sql=f"SELECT t.id AS row_id, CASE WHEN c.cluster_id IS NULL THEN 'not_clustered' "
                   f"ELSE 'domain:' || coalesce({label}, 'unlabelled') END AS reason, "
                   f"'source=' || t.source || coalesce(' cluster=' || c.cluster_id, '') || "
                   f"coalesce(' agreement=' || round(d.agreement, 2), '') || coalesce({how}, '') AS detail {joined} "
                   f"WHERE {label} IS NULL OR {label} NOT IN (SELECT unnest(?::VARCHAR[]))",
        ledger_params=[keep]),
        lambda staged: [checks.rows_conserved(rows_in, staged.count(warehouse),
                                              sum(staged.ledger_counts(warehouse).values()))])
    kept = warehouse.fetch_one("SELECT count(*) FROM r1_medical_traces")[0]
    ledger = warehouse.ledger_counts("r1_medical_traces")
    by_source = warehouse.fetch(
        "SELECT t.source, count(*), count(m.id) FROM r1_trace_rows t LEFT JOIN r1_medical_traces m ON m.id = t.id "
        "GROUP BY 1 ORDER BY 1")
    preview = warehouse.fetch("SELECT id, source, domain, prompt FROM r1_medical_traces ORDER BY source, id LIMIT 5")
    own_label = warehouse.fetch_one(
        "SELECT count(*) FROM r1_medical_traces m JOIN r1_cluster_domains d USING (cluster_id) WHERE d.per_prompt"
    )[0] if per_prompt else 0
    record_stage_run(context, warehouse, settings={"keep_domains": keep}, stats={"rows_in": rows_in, "kept": kept})
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": kept,
            "dagster/column_schema": sample_column_schema(R1_EXTRA_COLUMNS),
            "rows_in": rows_in,
            "medical_share": round(kept / rows_in, 4) if rows_in else 0.0,
            "kept_by_own_label_in_mixed_cluster": own_label,
            "kept_by_source": dg.MetadataValue.md(markdown_table(
                ["source", "traces", "kept", "share"],
                [(s, n, k, f"{k / n:.1%}" if n else "-") for s, n, k in by_source])),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(
                dict(sorted(ledger.items(), key=lambda kv: -kv[1])), "reason")),
            "preview": dg.MetadataValue.md(markdown_table(["id", "source", "domain", "prompt"], preview, 160)),
        },
        check_results=results,
    )


R1_ASSETS = [r1_prompt_embeddings, r1_clusters, r1_cluster_domains, r1_medical_traces]
