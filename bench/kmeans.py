"""K-means wall time and objective (core.clustering, faiss) on generated embedding-like vectors.

Vectors: a mixture of unit-norm Gaussian blobs in 384 dimensions (like sentence embeddings: many
topics, uneven sizes), L2-normalised. Objective = mean squared L2 distance of a row to its centroid.

  1. 100k × 384, K=1,000: flat K-means (what `method=auto` picks at this size).
  2. Flat vs two-level on the same subset (--subset rows, K scaled to keep rows per cluster): the
     objective cost of two-level clustering, and its speed-up.
  3. 1M × 384, K=50,000 (the full recipe): `method=auto` → two-level with the asset's defaults (fine Lloyd
     iterations, nprobe, refine from core.clustering). Goal: under 2 minutes on CPU.

    python bench/kmeans.py [--big-rows 1000000] [--big-k 50000] [--skip-big]

Final line: small_seconds=… small_objective=… subset_flat_objective=… subset_two_level_objective=…
two_level_worse_by=… big_seconds=… big_objective=… big_method=…
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402,F401  (two-level's CPU fine level uses torch: imported before timing, once per process)

from iimed_assets.core import clustering  # noqa: E402


def blobs(n: int, topics: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.pareto(1.5, size=topics) + 1
    labels = rng.choice(topics, size=n, p=weights / weights.sum())
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        part = labels[start:start + 100_000]
        x[start:start + len(part)] = centers[part] + rng.normal(scale=0.04, size=(len(part), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--small-k", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=50_000)
    parser.add_argument("--subset-k", type=int, default=2500)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--big-k", type=int, default=50_000)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    out = {}

    x = blobs(args.small_rows, topics=args.small_k * 2)
    r = clustering.kmeans(x, args.small_k, method="auto")
    print(f"{args.small_rows:,}×384 K={args.small_k:,}: {r.method} {r.seconds:.1f}s objective {r.objective:.5f}", flush=True)
    out.update(small_seconds=round(r.seconds, 1), small_objective=round(r.objective, 5), small_method=r.method)

    sub = x[: args.subset]
    flat = clustering.kmeans(sub, args.subset_k, method="flat")
    two = clustering.kmeans(sub, args.subset_k, method="two_level")
    worse = two.objective / flat.objective - 1
    print(f"subset {args.subset:,} K={args.subset_k:,}: flat {flat.seconds:.1f}s {flat.objective:.5f}, two-level "
          f"{two.seconds:.1f}s {two.objective:.5f} ({worse:+.2%}) {two.details}", flush=True)
    out.update(subset_flat_seconds=round(flat.seconds, 1), subset_two_level_seconds=round(two.seconds, 1),
               subset_flat_objective=round(flat.objective, 5), subset_two_level_objective=round(two.objective, 5),
               two_level_worse_by=round(worse, 4))
    del x, sub

    if not args.skip_big:
        started = time.perf_counter()
        big = blobs(args.big_rows, topics=args.big_k, seed=1)
        print(f"generated {args.big_rows:,}×384 in {time.perf_counter() - started:.1f}s", flush=True)
        r = clustering.kmeans(big, args.big_k, method="auto", log=lambda m: print(m, flush=True))
        sizes = r.sizes()
        print(f"{args.big_rows:,}×384 K={r.k:,}: {r.method} (coarse {r.coarse_k}) {r.seconds:.1f}s objective "
              f"{r.objective:.5f}; sizes min {sizes.min()} median {np.median(sizes):.0f} max {sizes.max()}", flush=True)
        print(f"  {r.details}", flush=True)
        out.update(big_rows=args.big_rows, big_k=r.k, big_method=r.method, big_seconds=round(r.seconds, 1),
                   big_objective=round(r.objective, 5))
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
