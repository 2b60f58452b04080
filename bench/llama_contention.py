"""The embedded engine on a busy machine: llama.cpp's thread settings with and without another CPU-bound process.

For each setting (threads 1 or all cores; OpenMP waiting threads spinning first, as llama.cpp ships, or sleeping,
`OMP_WAIT_POLICY=PASSIVE`, the backend's default) a fresh process loads SmolLM2-135M the way the backend does
(`LlamaCppLLM`, extra buffers off) and times `--calls` chat completions of a ~530-token prompt plus 13 generated
tokens, each prompt new at its start (no prefix reuse). Each setting runs quiet, then with `--busy` CPU-bound
processes beside it. A run that takes longer than `--timeout` seconds is stopped and reported as that.

    python bench/llama_contention.py [--calls 3] [--busy 1] [--timeout 120]

Final line: key=value pairs: the median seconds per call for each setting and load, e.g.
`t2_spin_quiet=… t2_spin_busy=… t2_passive_quiet=… t2_passive_busy=… t1_spin_quiet=… t1_spin_busy=…`
(the baseline is llama.cpp as it ships: spinning threads on every core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, statistics, sys, time
from iimed_assets.core.llm import ChatRequest
from iimed_assets.resources.llm import LlamaCppLLM
threads, calls = int(sys.argv[1]), int(sys.argv[2])
llm = LlamaCppLLM(n_ctx=2048, n_threads=threads)
llm.engine()
body = "Grade the answer. " + "The patient presents with fever and cough for three days. " * 45
times = []
for i in range(calls):
    req = ChatRequest.of([{"role": "user", "content": f"Case {i}. " + body}], max_tokens=13, temperature=0.0, seed=i)
    started = time.perf_counter()
    out, _ = llm.generate([req])
    times.append(time.perf_counter() - started)
    assert out[0][0].ok, out[0][0].error
print(json.dumps({"median_s": statistics.median(times), "prompt_tokens": out[0][0].prompt_tokens}))
"""


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _one(threads: int, passive: bool, calls: int, timeout: float) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # "" = set but empty: the backend leaves it alone and libgomp ignores it, so threads wait the way llama.cpp
    # ships (spinning before they sleep)
    env["OMP_WAIT_POLICY"] = "PASSIVE" if passive else ""
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(calls)], env=env, capture_output=True,
                             text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return float(timeout), 0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["median_s"], result["prompt_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside the engine in the busy runs")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    settings = [(cores, False), (cores, True), (1, False)]
    out: dict[str, object] = {"cores": cores}
    for load in ("quiet", "busy"):
        procs = _busy(args.busy) if load == "busy" else []
        time.sleep(1.0 if procs else 0.0)
        try:
            for threads, passive in settings:
                seconds, tokens = _one(threads, passive, args.calls, args.timeout)
                key = f"t{'all' if threads == cores and cores > 1 else threads}_{'passive' if passive else 'spin'}_{load}"
                out[key] = round(seconds, 2)
                out["prompt_tokens"] = tokens or out.get("prompt_tokens", 0)
                print(f"{key}: {seconds:.2f} s per call{' (stopped)' if seconds >= args.timeout else ''} "
                      f"[load {os.getloadavg()[0]:.1f}]", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
