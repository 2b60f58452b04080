"""OpenAI-compatible client throughput against the loopback server with injected latency.

1. Concurrency: R requests, server latency L, client concurrency C. The ideal rate is C/L; ratio =
   achieved / ideal (goal >= 0.9), at a realistic point (L=2 s, C=32) and a stress point (L=0.1 s, C=32)
   where the client's per-request CPU cost, not the server, sets the rate on a 2-core machine.
2. n samples per prompt: one request with n=N vs N separate requests (the client's fan-out mode), same
   prompts, same latency; reports both wall times and requests sent.

    python bench/llm_client.py [--latency 2.0] [--concurrency 32] [--requests 320] [--n 8] [--prompts 64]
Final line: key=value pairs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iimed_assets.core.llm import ChatRequest  # noqa: E402
from iimed_assets.resources.llm import OpenAICompatibleLLM  # noqa: E402


class ServerProcess:
    """The loopback server in its own process, so it does not share the client's GIL and cores' time slices."""

    def __init__(self, latency: float, supports_n: bool = True):
        cmd = [sys.executable, "-m", "iimed_assets.testing.openai_loopback", "--latency", str(latency)]
        if not supports_n:
            cmd.append("--no-n")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[1])
        self.url = self.proc.stdout.readline().strip()

    @property
    def counts(self) -> tuple[int, int]:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        requests, in_flight = self.proc.stdout.readline().split()[:2]
        return int(requests), int(in_flight)

    @property
    def requests(self) -> int:
        return self.counts[0]

    @property
    def max_in_flight(self) -> int:
        return self.counts[1]

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


def _reqs(k: int, n: int = 1) -> list[ChatRequest]:
    return [ChatRequest.of([{"role": "user", "content": f"bench prompt {i}"}], n=n, seed=0) for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser()
    # Primary point: 2 s per call (a short LLM answer; long ones take far longer), 32 in flight. The stress point shows
    # where the client's CPU cost per request (~4 ms on this 2-core machine) becomes the limit.
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--stress-latency", type=float, default=0.1)
    ap.add_argument("--stress-concurrency", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()

    def concurrency_point(latency: float, concurrency: int) -> tuple[float, float, int]:
        with ServerProcess(latency=latency) as server:
            llm = OpenAICompatibleLLM(base_url=server.url, model="bench", max_concurrency=concurrency)
            llm.generate(_reqs(4))  # warm up: imports, connection pool
            sent0 = server.requests
            started = time.perf_counter()
            _, stats = llm.generate(_reqs(args.requests))
            wall = time.perf_counter() - started
            assert stats.failures == 0 and server.requests - sent0 == args.requests
            rate, ideal = args.requests / wall, concurrency / latency
            print(f"L={latency}s C={concurrency}: {args.requests} requests in {wall:.2f}s = {rate:.1f} req/s, "
                  f"ideal {ideal:.1f}, ratio {rate / ideal:.3f} (max in flight {server.max_in_flight})", flush=True)
            return rate, ideal, server.max_in_flight

    rate, ideal, _ = concurrency_point(args.latency, args.concurrency)
    stress_rate, stress_ideal, _ = concurrency_point(args.stress_latency, args.stress_concurrency)

    with ServerProcess(latency=args.stress_latency) as server:
        timings = {}
        for label, supports_n in (("n_in_one", True), ("fan_out", False)):
            client = OpenAICompatibleLLM(base_url=server.url, model="bench", max_concurrency=args.concurrency,
                                         supports_n=supports_n)
            before = server.requests
            t0 = time.perf_counter()
            out, st = client.generate(_reqs(args.prompts, n=args.n))
            timings[label] = (time.perf_counter() - t0, server.requests - before)
            assert st.failures == 0 and sum(len(o) for o in out) == args.prompts * args.n
            print(f"{label:9}: {args.prompts} prompts x n={args.n} in {timings[label][0]:.2f}s, "
                  f"{timings[label][1]} requests", flush=True)

    (t_one, r_one), (t_fan, r_fan) = timings["n_in_one"], timings["fan_out"]
    print(f"latency_s={args.latency} concurrency={args.concurrency} requests={args.requests} "
          f"req_per_s={rate:.1f} ideal_req_per_s={ideal:.1f} ratio={rate / ideal:.3f} "
          f"stress_latency_s={args.stress_latency} stress_concurrency={args.stress_concurrency} "
          f"stress_req_per_s={stress_rate:.1f} stress_ratio={stress_rate / stress_ideal:.3f} "
          f"n={args.n} n_in_one_s={t_one:.2f} n_in_one_requests={r_one} fan_out_s={t_fan:.2f} "
          f"fan_out_requests={r_fan} n_speedup={t_fan / t_one:.2f}")


if __name__ == "__main__":
    main()
