"""K-means over prompt embeddings with faiss: flat for small problems, two-level for large ones.

Section 3 of the recipe clusters ~1M R1 prompts into K=50,000 clusters. Flat K-means at that size costs
O(n_train · K · d) per iteration (measured here: ~163 s per iteration on 2 CPU cores), so above
`FLAT_WORK_LIMIT` the clustering is two-level: a coarse K-means into ~sqrt(K) groups, then an
independent K-means inside each group with fine centroids allocated in proportion to its size (faiss'
`two_level_clustering` scheme). Every row is then assigned exactly to the nearest fine centroid of its
coarse group, so assignment also costs n · (K / nc1) · d instead of n · K · d.

Vectors are L2-normalised embeddings; distances are squared L2 (= 2 - 2·cosine), smaller is nearer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

PROMPTS_PER_CLUSTER = 40  # the default-run rule: K = round(n / 40)
MAX_POINTS_PER_CENTROID = 256  # training sample cap, as in the issue (faiss' own default)
FLAT_WORK_LIMIT = 2e9  # n_train * K above which two-level is used
ASSIGN_BATCH = 65_536


def choose_k(n: int, k: int | None = None, per_cluster: int = PROMPTS_PER_CLUSTER) -> int:
    """K for n rows: the configured K (the full recipe uses 50,000) or about `per_cluster` rows per cluster."""
    if n <= 0:
        return 0
    wanted = k if k else round(n / per_cluster)
    return int(max(1, min(n, wanted)))


def choose_method(n: int, k: int, method: str = "auto") -> str:
    if method not in ("auto", "flat", "two_level"):
        raise ValueError(f"method {method!r} is not auto, flat or two_level")
    if method != "auto":
        return method
    n_train = min(n, MAX_POINTS_PER_CENTROID * k)
    return "flat" if n_train * k <= FLAT_WORK_LIMIT or k < 64 else "two_level"


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (K, d) float32
    assignment: np.ndarray  # (n,) int64 cluster id per row
    distance: np.ndarray  # (n,) float32 squared L2 to the assigned centroid
    method: str
    k: int
    seconds: float
    train_points: int
    coarse_k: int = 0
    details: dict = field(default_factory=dict)

    @property
    def objective(self) -> float:
        """Mean squared distance of a row to its centroid (lower is a tighter fit)."""
        return float(self.distance.mean()) if len(self.distance) else 0.0

    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignment, minlength=self.k)


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except AttributeError:  # faiss-cpu builds have no GPU functions
        return False


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def _train(x: np.ndarray, k: int, *, niter: int, seed: int, gpu: bool) -> np.ndarray:
    faiss = _faiss()
    if k >= len(x):  # every point its own centroid
        return np.ascontiguousarray(x[:k], dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, gpu=gpu, verbose=False,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def assign(x: np.ndarray, centroids: np.ndarray, *, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid (squared L2) for every row, in batches."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    ids = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), ASSIGN_BATCH):
        d, i = index.search(np.ascontiguousarray(x[start:start + ASSIGN_BATCH], dtype=np.float32), 1)
        ids[start:start + len(i)] = i[:, 0]
        dist[start:start + len(d)] = d[:, 0]
    return ids, dist


def kmeans(x: np.ndarray, k: int, *, method: str = "auto", niter: int = 20, seed: int = 0,
           gpu: bool | None = None, log=None) -> KMeansResult:
    """Cluster the rows of x into k clusters and assign every row. Deterministic for a given seed."""
    started = time.perf_counter()
    n = len(x)
    if n == 0 or k <= 0:
        return KMeansResult(np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32), np.zeros(0, np.int64),
                            np.zeros(0, np.float32), "none", 0, 0.0, 0)
    k = min(k, n)
    gpu = gpu_available() if gpu is None else gpu
    method = choose_method(n, k, method)
    rng = np.random.default_rng(seed)
    if method == "flat":
        sample = _sample(n, MAX_POINTS_PER_CENTROID * k, rng)
        centroids = _train(x[sample], k, niter=niter, seed=seed, gpu=gpu)
        ids, dist = assign(x, centroids, gpu=gpu)
        return KMeansResult(centroids, ids, dist, "flat", k, time.perf_counter() - started, len(sample))

    # two-level: coarse groups, then fine centroids inside each group in proportion to its size
    nc1 = max(2, min(k, int(round(math.sqrt(k)))))
    coarse_sample = _sample(n, 2000 * nc1, rng)  # faiss' two_level_clustering uses 2000 points per coarse centroid
    coarse = _train(x[coarse_sample], nc1, niter=niter, seed=seed, gpu=gpu)
    group, _ = assign(x, coarse, gpu=gpu)
    group_sizes = np.bincount(group, minlength=nc1)
    alloc = _allocate(group_sizes, k)
    order = np.argsort(group, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(group_sizes)])
    centroids_parts, ids, dist = [], np.empty(n, np.int64), np.empty(n, np.float32)
    offset = trained = 0
    for g in range(nc1):
        rows = order[bounds[g]:bounds[g + 1]]
        kg = int(min(alloc[g], len(rows)))
        if kg == 0:
            continue
        local_sample = rows[_sample(len(rows), MAX_POINTS_PER_CENTROID * kg, rng)]
        trained += len(local_sample)
        cg = _train(x[local_sample], kg, niter=niter, seed=seed + g + 1, gpu=gpu)
        local_ids, local_dist = assign(x[rows], cg, gpu=gpu)
        ids[rows] = local_ids + offset
        dist[rows] = local_dist
        centroids_parts.append(cg)
        offset += kg
        if log and (g + 1) % max(1, nc1 // 10) == 0:
            elapsed = time.perf_counter() - started
            log(f"two-level k-means: group {g + 1}/{nc1}, {offset:,} centroids, {elapsed:.0f}s elapsed, "
                f"eta {elapsed / (g + 1) * (nc1 - g - 1):.0f}s")
    centroids = np.vstack(centroids_parts).astype(np.float32)
    return KMeansResult(centroids, ids, dist, "two_level", len(centroids), time.perf_counter() - started, trained,
                        coarse_k=nc1, details={"coarse_train_points": len(coarse_sample)})


def _allocate(group_sizes: np.ndarray, k: int) -> np.ndarray:
    """Fine centroids per coarse group, proportional to group size, summing to k, each ≤ the group's rows."""
    n = int(group_sizes.sum())
    raw = group_sizes * k / n
    alloc = np.minimum(np.floor(raw).astype(np.int64), group_sizes)
    alloc[(alloc == 0) & (group_sizes > 0)] = 1
    # hand out what is left to the groups with the largest remainders that still have room
    left = k - int(alloc.sum())
    by_remainder = np.argsort(-(raw - np.floor(raw)), kind="stable")
    while left > 0 and (alloc < group_sizes).any():
        for g in by_remainder:
            if left == 0:
                break
            if alloc[g] < group_sizes[g]:
                alloc[g] += 1
                left -= 1
    while alloc.sum() > k:  # more non-empty groups than k: trim the largest allocations
        alloc[np.argmax(alloc)] -= 1
    return alloc
