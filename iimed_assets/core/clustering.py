"""K-means over prompt embeddings with faiss: flat for small problems, two-level for large ones.

Section 3 of the recipe clusters ~1M R1 prompts into K=50,000 clusters. Flat K-means at that size costs
O(n_train · K · d) per iteration (measured here: ~163 s per iteration on 2 CPU cores), so above
`FLAT_WORK_LIMIT` the clustering is two-level (faiss' `two_level_clustering` scheme, extended):

1. coarse: faiss K-means into ~sqrt(K) groups; every row gets its `nprobe` nearest groups (exact, faiss);
2. fine: an independent Lloyd K-means inside each group, with fine centroids allocated in proportion to the
   group's size. On GPU with faiss-gpu; on CPU with torch, in bf16 where the CPU has bf16 hardware (~4× the
   fp32 GEMM rate here), candidate selection only;
3. assignment: every row goes to its nearest fine centroid among those of its `nprobe` groups (an IVF search,
   n · nprobe · K/sqrt(K) · d instead of n · K · d), with the final distance and choice exact in fp32;
   `refine` global Lloyd iterations (centroids = means of their rows, then reassign) repair the seams that
   the per-group fits leave at group borders.

On a CUDA machine without faiss-gpu, K-means runs flat at the full K in torch (`torch_flat`): Lloyd iterations with
low-precision batched scores, exact fp32 distances for the final assignment (1M × 50,000 is seconds on one GPU, so
two-level is not needed there). The same code runs on the CPU (`backend="torch", device="cpu"`), which is how the
tests check it against faiss. `select_backend` picks: faiss-gpu when installed, else torch on CUDA, else faiss
on the CPU.

Vectors are L2-normalised embeddings; distances are squared L2 (= 2 - 2·cosine), smaller is nearer."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROMPTS_PER_CLUSTER = 40  # the default-run rule: K = round(n / 40)
MAX_POINTS_PER_CENTROID = 256  # training sample cap, as in the issue (faiss' own default)
FLAT_WORK_LIMIT = 2e9  # n_train * K above which two-level is used
ASSIGN_BATCH = 65_536
NPROBE = 3  # two-level: coarse groups searched per row when assigning
REFINE = 1  # two-level: global Lloyd iterations over the multi-probe assignment
FINE_NITER = 10  # two-level: Lloyd iterations inside each coarse group


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
    """faiss with GPU support and a GPU (faiss-gpu); False without faiss or with a CPU-only build."""
    try:
        return _faiss().get_num_gpus() > 0
    except (ImportError, AttributeError):  # no faiss, or faiss-cpu (no GPU functions)
        return False


BACKENDS = ("auto", "faiss", "torch")


@dataclass(frozen=True)
class KMeansBackend:
    """What computes K-means: `faiss` (GPU when faiss-gpu and a GPU are there) or `torch` on `device`."""

    kind: str  # faiss | torch
    device: str  # cpu | cuda | cuda:N

    @property
    def name(self) -> str:
        return f"{self.kind}-{'gpu' if self.device.startswith('cuda') else 'cpu'}"

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return torch.cuda.is_available()


def select_backend(backend: str = "auto", device: str | None = None) -> KMeansBackend:
    """auto: faiss-gpu when installed and a GPU is there; else torch on CUDA when CUDA is there; else faiss on
    the CPU. `torch` runs on `device` (default: cuda when available, else cpu)."""
    if backend not in BACKENDS:
        raise ValueError(f"k-means backend {backend!r} is not one of {BACKENDS}")
    if backend == "faiss" or (backend == "auto" and gpu_available()):
        return KMeansBackend("faiss", "cuda" if gpu_available() else "cpu")
    if backend == "torch":
        return KMeansBackend("torch", device or ("cuda" if _cuda_available() else "cpu"))
    return KMeansBackend("torch", device or "cuda") if _cuda_available() else KMeansBackend("faiss", "cpu")


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
    dist, ids = _search(x, centroids, 1, gpu=gpu)
    return ids[:, 0], dist[:, 0]


def kmeans(x: np.ndarray, k: int, *, method: str = "auto", niter: int = 20, seed: int = 0,
           gpu: bool | None = None, nprobe: int = NPROBE, refine: int = REFINE, fine_niter: int = FINE_NITER,
           backend: str | KMeansBackend = "faiss", device: str | None = None, log=None) -> KMeansResult:
    """Cluster the rows of x into k clusters and assign every row. Deterministic for a given seed.

    `backend`: faiss (`gpu` says whether faiss-gpu is used; default: when available), torch (flat only, on
    `device`: default cuda when available), auto (`select_backend`), or a `KMeansBackend`. With torch, `method` auto means flat.
    `niter` is for flat K-means and the coarse level. Two-level only: `fine_niter` Lloyd iterations inside each
    coarse group; `nprobe` coarse groups searched per row when assigning; `refine` global Lloyd iterations
    (centroid = mean of its rows, then multi-probe reassignment) after the per-group fits."""
    started = time.perf_counter()
    n = len(x)
    if n == 0 or k <= 0:
        return KMeansResult(np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32), np.zeros(0, np.int64),
                            np.zeros(0, np.float32), "none", 0, 0.0, 0)
    k = min(k, n)
    chosen = backend if isinstance(backend, KMeansBackend) else select_backend(backend, device)
    if chosen.kind == "torch":
        if method not in ("auto", "flat"):
            raise ValueError(f"the torch k-means backend is flat only (method {method!r}); use backend='faiss'")
        return torch_flat(x, k, niter=niter, seed=seed, device=chosen.device, log=log)
    gpu = (chosen.gpu if isinstance(backend, KMeansBackend) or backend == "auto" else gpu_available()) \
        if gpu is None else gpu
    method = choose_method(n, k, method)
    rng = np.random.default_rng(seed)
    if method == "flat":
        sample = _sample(n, MAX_POINTS_PER_CENTROID * k, rng)
        centroids = _train(x[sample], k, niter=niter, seed=seed, gpu=gpu)
        ids, dist = assign(x, centroids, gpu=gpu)
        return KMeansResult(centroids, ids, dist, "flat", k, time.perf_counter() - started, len(sample))
    return _two_level(np.ascontiguousarray(x, dtype=np.float32), k, niter=niter, fine_niter=fine_niter, seed=seed,
                      gpu=gpu, nprobe=nprobe, refine=refine, rng=rng, started=started, log=log)


def _two_level(x: np.ndarray, k: int, *, niter: int, fine_niter: int, seed: int, gpu: bool, nprobe: int,
               refine: int, rng: np.random.Generator, started: float, log) -> KMeansResult:
    n = len(x)
    timings: dict[str, float] = {}

    def phase(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 2)
        if log:
            log(f"two-level k-means: {name} {now - t0:.1f}s ({now - started:.0f}s elapsed)")
        return now

    # 1. coarse: faiss K-means into ~sqrt(K) groups; each row's nprobe nearest groups (the first is its own)
    t = time.perf_counter()
    nc1 = max(2, min(k, int(round(math.sqrt(k)))))
    nprobe = max(1, min(nprobe, nc1))
    coarse_sample = _sample(n, MAX_POINTS_PER_CENTROID * nc1, rng)
    coarse = _train(x[coarse_sample], nc1, niter=niter, seed=seed, gpu=gpu)
    _, probes = _search(x, coarse, nprobe, gpu=gpu)
    group = probes[:, 0]
    t = phase("coarse", t)

    # 2. fine: an independent K-means inside each group, centroids allocated in proportion to its size
    group_sizes = np.bincount(group, minlength=nc1)
    alloc = _allocate(group_sizes, k)
    order = np.argsort(group, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(group_sizes)])
    backend = _Backend(gpu)
    parts, trained = [], 0
    for g in range(nc1):
        rows = order[bounds[g]:bounds[g + 1]]
        kg = int(min(alloc[g], len(rows)))
        if kg == 0:
            parts.append(np.zeros((0, x.shape[1]), np.float32))
            continue
        local = x[rows[_sample(len(rows), MAX_POINTS_PER_CENTROID * kg, rng)]]
        trained += len(local)
        parts.append(_train(local, kg, niter=fine_niter, seed=seed + g + 1, gpu=True) if gpu
                     else backend.lloyd(local, kg, niter=fine_niter, seed=seed + g + 1))
        if log and (g + 1) % max(1, nc1 // 10) == 0:
            elapsed = time.perf_counter() - t
            log(f"two-level k-means: group {g + 1}/{nc1}, {sum(len(p) for p in parts):,} centroids, "
                f"{elapsed:.0f}s, eta {elapsed / (g + 1) * (nc1 - g - 1):.0f}s")
    starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    centroids = np.vstack(parts).astype(np.float32)
    t = phase("fine", t)

    # 3. assign every row among the fine centroids of its nprobe nearest groups; refine globally
    ids, dist = backend.probe_assign(x, probes, centroids, starts)
    objectives = [float(dist.mean())]
    for _ in range(refine):
        centroids = _means(x, ids, centroids)
        ids, dist = backend.probe_assign(x, probes, centroids, starts)
        objectives.append(float(dist.mean()))
    phase("assign_refine", t)
    details = {"coarse_train_points": len(coarse_sample), "nprobe": nprobe, "refine": refine, "fine_niter": fine_niter,
               "fine_compute": "faiss-gpu" if gpu else backend.name,
               "objective_per_refine": [round(o, 6) for o in objectives], "phase_seconds": timings}
    return KMeansResult(centroids, ids, dist, "two_level", len(centroids), time.perf_counter() - started, trained,
                        coarse_k=nc1, details=details)


def _search(x: np.ndarray, centroids: np.ndarray, k: int, *, gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest centroids (squared L2, exact) of every row, in batches."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    ids = np.empty((len(x), k), dtype=np.int64)
    dist = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), ASSIGN_BATCH):
        d, i = index.search(np.ascontiguousarray(x[start:start + ASSIGN_BATCH], dtype=np.float32), k)
        ids[start:start + len(i)] = i
        dist[start:start + len(d)] = d
    return dist, ids


def _means(x: np.ndarray, ids: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Centroid = mean of its rows; a centroid with no rows keeps its place."""
    sums = np.zeros_like(previous, dtype=np.float64)
    _add_rows(sums, ids, x)
    counts = np.bincount(ids, minlength=len(previous))
    out = previous.copy()
    nz = counts > 0
    out[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
    return out


def _add_rows(sums: np.ndarray, ids: np.ndarray, x: np.ndarray) -> None:
    import torch

    acc = torch.from_numpy(sums)
    for start in range(0, len(x), _Backend.BATCH):
        acc.index_add_(0, torch.from_numpy(ids[start:start + _Backend.BATCH]),
                       torch.from_numpy(x[start:start + _Backend.BATCH]).double())


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there torch's bf16 GEMM runs ~4×
    faster than fp32 (measured on 2 AMD EPYC cores: 119 vs 28 GFLOP/s for 4,500×384 @ 384×224)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class _Backend:
    """Dense scoring for the fine level: torch with bf16 inputs on CPUs that have bf16 hardware (fp16 on CUDA),
    fp32 otherwise. Low precision only ranks candidates: every returned distance is recomputed in fp32 and the
    final choice is exact among the two best candidates of each probed group.

    Work goes in batches of `BATCH` rows so that temporaries stay small and are reused by the allocator (fresh
    pages are slow on virtual machines: 0.1 GB/s measured here on first touch, 3.5 GB/s after)."""

    BATCH = 8192

    def __init__(self, gpu: bool):
        import torch

        self.torch = torch
        self.device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            self.dtype = torch.float16
        else:
            self.dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        self.name = f"torch-{self.device}-{str(self.dtype).removeprefix('torch.')}"

    def _low(self, a: np.ndarray, *, ones: bool = False, centroids: bool = False):
        """Rows in low precision with one extra column so that a single GEMM gives x·c - ||c||²/2 (larger =
        nearer): rows get a trailing 1 (`ones`), centroids a trailing -||c||²/2 (`centroids`)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        if ones or centroids:
            extra = np.ones((len(a), 1), np.float32) if ones else -0.5 * np.einsum("nd,nd->n", a, a)[:, None]
            a = np.hstack([a, extra])
        return self.torch.from_numpy(a).to(self.device).to(self.dtype)

    def _scores(self, xl_aug, c_aug) -> np.ndarray:
        """x·c - ||c||²/2 for rows × centroids as fp32 numpy (= -(squared distance - ||x||²)/2: the largest is
        the nearest centroid)."""
        return (xl_aug @ c_aug.T).float().cpu().numpy()

    def lloyd(self, x: np.ndarray, k: int, *, niter: int, seed: int) -> np.ndarray:
        """Lloyd's K-means from k distinct random rows; an emptied centroid is re-seeded at the row farthest from
        its centroid (as faiss splits)."""
        m, d = x.shape
        if k >= m:
            return np.ascontiguousarray(x[:k], dtype=np.float32)
        rng = np.random.default_rng(seed)
        x = np.ascontiguousarray(x, dtype=np.float32)
        xl = self._low(x, ones=True)
        c = x[np.sort(rng.choice(m, size=k, replace=False))].copy()
        near = np.zeros(m, np.int64)
        xt = self.torch.from_numpy(x)
        sums = self.torch.zeros((k, d), dtype=self.torch.float32)
        for _ in range(niter):
            c_aug = self._low(c, centroids=True)
            for b in range(0, m, self.BATCH):
                near[b:b + self.BATCH] = self._scores(xl[b:b + self.BATCH], c_aug).argmax(1)
            counts = np.bincount(near, minlength=k)
            sums.zero_().index_add_(0, self.torch.from_numpy(near), xt)
            full = counts > 0
            c[full] = sums.numpy()[full] / counts[full, None]
            empty = int((~full).sum())
            if empty:
                far = np.argsort(-((x - c[near]) ** 2).sum(1), kind="stable")[:empty]
                c[~full] = x[far]
        return c

    def probe_assign(self, x: np.ndarray, probes: np.ndarray, centroids: np.ndarray,
                     starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest fine centroid of every row among the centroids of its probed coarse groups: the two best
        candidates of each probed group by low-precision score, the two best of those overall, then the exact
        fp32 minimum of these two."""
        n, p = probes.shape
        d = x.shape[1]
        cand = np.full((n, 2 * p), -1, np.int64)  # slot 2j, 2j+1: the two best centroids in the row's j-th group
        score = np.full((n, 2 * p), -np.inf, np.float32)  # their low-precision scores (larger = nearer)
        flat_groups = probes.reshape(-1)
        order = np.argsort(flat_groups, kind="stable")
        bounds = np.searchsorted(flat_groups[order], np.arange(len(starts)))
        low = self.torch.ones((self.BATCH, d + 1), dtype=self.dtype, device=self.device)  # last column stays 1
        for g in range(len(starts) - 1):
            lo, hi = int(starts[g]), int(starts[g + 1])
            members = order[bounds[g]:bounds[g + 1]]
            if hi == lo or not len(members):
                continue
            c_aug = self._low(centroids[lo:hi], centroids=True)
            for b in range(0, len(members), self.BATCH):
                flat = members[b:b + self.BATCH]
                rows, slot = flat // p, 2 * (flat % p)
                m = len(rows)
                low[:m, :d].copy_(self.torch.from_numpy(x[rows]))  # fancy indexing: faster than np.take(out=)
                scores = self._scores(low[:m], c_aug)
                at = np.arange(m)
                first = scores.argmax(1)
                cand[rows, slot] = first + lo
                score[rows, slot] = scores[at, first]
                if hi - lo > 1:
                    scores[at, first] = -np.inf
                    second = scores.argmax(1)
                    cand[rows, slot + 1] = second + lo
                    score[rows, slot + 1] = scores[at, second]
        # the two best candidates overall, then exact: ||x||² + ||c||² - 2 x·c in fp32
        top = np.argsort(-score, axis=1, kind="stable")[:, :2]
        cand = np.take_along_axis(cand, top, 1)
        valid = np.take_along_axis(score, top, 1) > -np.inf  # a one-centroid group gives a single candidate
        c_norms = np.einsum("nd,nd->n", centroids, centroids)
        x_norms = np.einsum("nd,nd->n", x, x)
        dd = np.empty((n, 2), np.float32)
        step = 2048
        for b in range(0, n, step):
            xb = x[b:b + step]
            for j in range(2):
                dd[b:b + step, j] = np.einsum("nd,nd->n", xb, centroids[np.maximum(cand[b:b + step, j], 0)])
        dd *= -2
        dd += x_norms[:, None]
        dd += c_norms[np.maximum(cand, 0)]
        np.maximum(dd, 0, out=dd)
        dd[~valid] = np.inf
        pick = dd.argmin(1)[:, None]
        return np.take_along_axis(cand, pick, 1)[:, 0], np.take_along_axis(dd, pick, 1)[:, 0]


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


# ---- flat K-means in torch (CUDA without faiss-gpu; the same code on the CPU) ---------------------------------

SCORE_BYTES_CUDA = 1 << 30  # low-precision score block per batch of rows (rows × K)
SCORE_BYTES_CPU = 64 << 20
FINAL_CANDIDATES = 4  # final assignment: exact fp32 distance to the best few centroids by low-precision score


def _low_dtype(torch, device: str):
    if device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


class _TorchScorer:
    """Batched nearest-centroid scores in low precision on one device.

    Rows are stored once as [x, 1, 0…] and centroids as [c, -||c||²/2, 0…] (width padded to a multiple of 8 for the
    tensor cores), so one GEMM gives x·c - ||c||²/2, whose largest value marks the nearest centroid. Only a
    `rows × K` score block exists at a time; distances that are reported are recomputed in fp32."""

    def __init__(self, torch, device: str, d: int, k: int, score_bytes: int | None):
        self.torch, self.device, self.d = torch, device, d
        self.dtype = _low_dtype(torch, device)
        self.width = d + 1 + (-(d + 1)) % 8
        budget = score_bytes or (SCORE_BYTES_CUDA if device.startswith("cuda") else SCORE_BYTES_CPU)
        self.rows = int(max(256, budget // (max(k, 1) * (torch.finfo(self.dtype).bits // 8))))

    def rows_low(self, x):
        out = self.torch.zeros((len(x), self.width), dtype=self.dtype, device=self.device)
        out[:, :self.d] = x
        out[:, self.d] = 1
        return out

    def centroids_low(self, c):
        out = self.torch.zeros((len(c), self.width), dtype=self.dtype, device=self.device)
        out[:, :self.d] = c
        out[:, self.d] = -0.5 * (c * c).sum(1)
        return out


def _segment_sums(torch, x, ids, k: int, rows: int):
    """Per-cluster sums of the rows of x (fp32 out), deterministic on every device: rows sorted by cluster, a
    running fp64 prefix sum in chunks, differences at the cluster boundaries (index_add_ on CUDA adds with
    atomics, in an order that changes from run to run)."""
    order = torch.argsort(ids, stable=True)
    ends = torch.bincount(ids, minlength=k).cumsum(0)  # one past each cluster's last sorted row
    last = ends - 1
    prefix = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    carry = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, len(order), rows):
        cs = x[order[a:a + rows]].double().cumsum(0) + carry
        here = (last >= a) & (last < a + len(cs))
        prefix[here] = cs[last[here] - a]
        carry = cs[-1]
    sums = prefix.clone()
    sums[1:] -= prefix[:-1]
    return sums.float()


def torch_flat(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, device: str = "cpu",
               score_bytes: int | None = None, init: np.ndarray | None = None, log=None) -> KMeansResult:
    """Flat Lloyd K-means at the full K in torch; deterministic for a seed on a given device.

    Training rows and the initial centroids are drawn as in the faiss/CPU path (at most
    MAX_POINTS_PER_CENTROID · K rows; k distinct random rows). Each iteration scores row batches against every
    centroid in low precision (fp16 on CUDA; bf16 on CPUs with bf16 hardware, else fp32), takes the best, and
    moves each centroid to the mean of its rows (fp32, summed in fp64); an emptied centroid is re-seeded at the
    row farthest from its new centroid. Every row of x is then assigned with its distance computed in fp32
    among its FINAL_CANDIDATES best-scored centroids. Memory: x and one `rows × K` score block on the device.
    `init`: starting centroids (k × d) instead of random rows, e.g. to compare with another implementation."""
    import torch

    started = time.perf_counter()
    n, d = x.shape
    rng = np.random.default_rng(seed)
    sample = _sample(n, MAX_POINTS_PER_CENTROID * k, rng)
    train = x if len(sample) == n else x[sample]
    m = len(train)
    scorer = _TorchScorer(torch, device, d, k, score_bytes)
    rows = scorer.rows
    details: dict = {"device": device, "score_dtype": str(scorer.dtype).removeprefix("torch."),
                     "batch_rows": rows, "objective_per_iter": [], "reseeded": 0}
    with torch.inference_mode():
        if k >= m:  # every row its own centroid
            c = torch.from_numpy(np.ascontiguousarray(train[:k], dtype=np.float32)).to(device)
        else:
            xt = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)).to(device)
            xl = scorer.rows_low(xt)
            if init is None:
                c = xt[torch.from_numpy(np.sort(rng.choice(m, size=k, replace=False))).to(device)].clone()
            else:
                c = torch.from_numpy(np.array(init, dtype=np.float32)).to(device)
            ids = torch.empty(m, dtype=torch.long, device=device)
            for it in range(niter):
                t0 = time.perf_counter()
                cl = scorer.centroids_low(c)
                total = torch.zeros((), dtype=torch.float64, device=device)
                for b in range(0, m, rows):
                    ids[b:b + rows] = (xl[b:b + rows] @ cl.T).argmax(1)
                    total += ((xt[b:b + rows] - c[ids[b:b + rows]]) ** 2).sum(1).double().sum()
                counts = torch.bincount(ids, minlength=k)
                full = counts > 0
                c = torch.where(full[:, None], _segment_sums(torch, xt, ids, k, rows) / counts.clamp(min=1)[:, None], c)
                empty = int((~full).sum())
                if empty:  # re-seed at the rows farthest from their (new) centroids, as faiss splits clusters
                    dist = torch.cat([((xt[b:b + rows] - c[ids[b:b + rows]]) ** 2).sum(1) for b in range(0, m, rows)])
                    c[~full] = xt[torch.argsort(dist, descending=True, stable=True)[:empty]]
                    details["reseeded"] += empty
                objective = float(total) / m
                details["objective_per_iter"].append(round(objective, 6))
                if log:
                    log(f"torch k-means ({device}): iteration {it + 1}/{niter} objective {objective:.5f}, "
                        f"{empty} empty re-seeded, {time.perf_counter() - t0:.2f}s")
            del xl, xt
        train_s = time.perf_counter() - started
        ids_all, dist_all = _torch_assign(torch, x, c, scorer)
        details["phase_seconds"] = {"train": round(train_s, 2), "assign": round(time.perf_counter() - started - train_s, 2)}
        centroids = c.cpu().numpy()
    return KMeansResult(centroids, ids_all, dist_all, "flat", k, time.perf_counter() - started, m,
                        details={"backend": f"torch-{'gpu' if device.startswith('cuda') else 'cpu'}", **details})


def _torch_assign(torch, x: np.ndarray, c, scorer: _TorchScorer) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of x: the best FINAL_CANDIDATES by low-precision score, then the exact fp32
    minimum of ||x||² + ||c||² - 2 x·c among them. x stays on the host; batches travel."""
    n = len(x)
    t = min(FINAL_CANDIDATES, len(c))
    cl = scorer.centroids_low(c)
    c2 = (c * c).sum(1)
    ids = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    for b in range(0, n, scorer.rows):
        xb = torch.from_numpy(np.ascontiguousarray(x[b:b + scorer.rows], dtype=np.float32)).to(scorer.device)
        cand = (scorer.rows_low(xb) @ cl.T).topk(t, dim=1).indices
        dd = ((xb * xb).sum(1)[:, None] + c2[cand] - 2 * torch.einsum("bd,btd->bt", xb, c[cand])).clamp_min_(0)
        best = dd.argmin(1, keepdim=True)
        ids[b:b + len(xb)] = cand.gather(1, best)[:, 0].cpu().numpy()
        dist[b:b + len(xb)] = dd.gather(1, best)[:, 0].cpu().numpy()
    return ids, dist
