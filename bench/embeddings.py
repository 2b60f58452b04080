"""Embedding throughput of the asset's embedder against plain fp32 SentenceTransformer.encode.

Same real prompts (from ../shared/data, see _texts.labelled_domain_prompts), same model (the offline
all-MiniLM-L6-v2), same machine, measured in one run. The asset path is `Embedder()` with its defaults
(bf16 autocast and batch 16 on CPU; fp16 and batch 512 on CUDA); the baseline is
`SentenceTransformer(path).encode(texts, normalize_embeddings=True)` with its defaults (fp32, batch 32).

    python bench/embeddings.py [--n 1500]

Final line: texts=… baseline_per_s=… asset_per_s=… ratio=… min_cos=… mean_cos=…
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _texts import labelled_domain_prompts  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    from iimed_assets.resources.embedder import Embedder

    prompts = [p for _, _, p in labelled_domain_prompts(200, 20)]
    texts = prompts[:: max(1, len(prompts) // args.n)][: args.n]
    embedder = Embedder()
    baseline = SentenceTransformer(embedder.resolved_model_path(), device=embedder.resolved_device())
    baseline.encode(texts[:32]); embedder.encode(texts[:32])  # warm up both
    print(f"{len(texts)} texts, device {embedder.resolved_device()}, asset precision {embedder.resolved_precision()} "
          f"batch {embedder.resolved_batch_size()}", flush=True)

    started = time.perf_counter()
    reference = baseline.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    base_s = time.perf_counter() - started
    print(f"baseline fp32 encode: {len(texts) / base_s:.1f} texts/s", flush=True)
    started = time.perf_counter()
    fast = embedder.encode(texts)
    fast_s = time.perf_counter() - started
    print(f"asset embedder: {len(texts) / fast_s:.1f} texts/s", flush=True)
    cos = (reference.astype(np.float32) * fast).sum(1)
    print(f"texts={len(texts)} baseline_per_s={len(texts) / base_s:.1f} asset_per_s={len(texts) / fast_s:.1f} "
          f"ratio={base_s / fast_s:.2f} min_cos={cos.min():.4f} mean_cos={cos.mean():.5f}")


if __name__ == "__main__":
    main()
