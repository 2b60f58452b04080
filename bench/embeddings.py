"""Embedding throughput of the asset's embedder against plain SentenceTransformer.encode, on this machine's device.

Same real prompts (from ../shared/data, see _texts.labelled_domain_prompts), same model (the offline
all-MiniLM-L6-v2), measured in one run, in alternating rounds (this VM's speed drifts; the medians are reported):

- baseline: `SentenceTransformer(path).encode(texts, normalize_embeddings=True)` with its defaults (fp32, batch 32);
- previous: the embedder's previous recipe, `encode` per 4,096-text chunk with bf16 autocast and batch 16 on CPU
  (fp16 weights and batch 512 on CUDA) — what `Embedder.encode` did before core.embedding;
- asset: `Embedder().encode` with its defaults (core.embedding: texts cut at the 256-token window, length-sorted
  over the whole input, the Rust tokeniser called directly, tokenised ahead on CUDA).

    python bench/embeddings.py [--n 1500] [--rounds 3]

Final line: texts=… baseline_per_s=… previous_per_s=… asset_per_s=… ratio=… vs_previous=… min_cos=… mean_cos=…
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _texts import labelled_domain_prompts  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    from iimed_assets.resources.embedder import Embedder

    prompts = [p for _, _, p in labelled_domain_prompts(200, 20)]
    texts = prompts[:: max(1, len(prompts) // args.n)][: args.n]
    embedder = Embedder()
    device, precision = embedder.resolved_device(), embedder.resolved_precision()
    baseline = SentenceTransformer(embedder.resolved_model_path(), device=device)
    model = embedder._model()

    def previous(items):
        out = []
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        for start in range(0, len(items), 4096):
            with torch.inference_mode(), autocast:
                emb = model.encode(items[start:start + 4096], batch_size=embedder.resolved_batch_size(),
                                   convert_to_tensor=True, show_progress_bar=False)
            v = emb.float().cpu().numpy()
            out.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
        return np.vstack(out)

    paths = {
        "baseline": lambda items: baseline.encode(items, normalize_embeddings=True, convert_to_numpy=True),
        "previous": previous,
        "asset": embedder.encode,
    }
    for fn in paths.values():  # warm up every path
        fn(texts[:32])
    print(f"{len(texts)} texts, device {device}, asset precision {precision} batch {embedder.resolved_batch_size()}",
          flush=True)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    vectors = {}
    for r in range(args.rounds):
        for name, fn in paths.items():
            started = time.perf_counter()
            vectors[name] = fn(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    cos = (vectors["baseline"].astype(np.float32) * vectors["asset"]).sum(1)
    print(f"texts={len(texts)} baseline_per_s={med['baseline']:.1f} previous_per_s={med['previous']:.1f} "
          f"asset_per_s={med['asset']:.1f} ratio={med['asset'] / med['baseline']:.2f} "
          f"vs_previous={med['asset'] / med['previous']:.2f} min_cos={cos.min():.4f} mean_cos={cos.mean():.5f}")


if __name__ == "__main__":
    main()
