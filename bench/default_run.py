"""The default run, timed: `iimed-assets materialize` (the laptop profile on the bundled sample) from an empty
warehouse and an empty Dagster instance, quiet and/or with `iimed-assets dev` (webserver + daemon) running
beside it, as a new user would have it.

Each run is a fresh process with its own temp warehouse, Dagster home and LLM cache (nothing is reused between
runs, so the second run pays for every call again). The dev server gets its own home too, and is started first
and given `--dev-warmup` seconds to finish loading the code location before the run starts.

    python bench/default_run.py [--mode quiet|dev|both] [--dev-warmup 60] [--keep DIR]

Per run it prints the seconds per asset (summed over partitions), then the zero counts the laptop profile
promises (judge_unparsable in section 4, unknown domain votes in section 3, judge_unparsable verdicts in
section 2), and the final rows. Final line: key=value pairs (`quiet_s`, `dev_s`, `dev_over_quiet`, ...).
Timings on a machine shared with other work are inflated; compare the two modes from one invocation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(ok|warn|FAILED)\s+(\S+)\s+(\S*)\s+rows=\s*(\S+)\s+([\d.]+)s")


def _env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DAGSTER_HOME": str(base / "home"), "IIMED_WAREHOUSE": str(base / "warehouse.duckdb"),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "IIMED_PROFILE": "laptop"})
    (base / "home").mkdir(parents=True, exist_ok=True)
    return env


def _counts(warehouse: Path) -> dict[str, int]:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        def one(sql: str) -> int:
            try:
                return int(con.execute(sql).fetchone()[0])
            except duckdb.Error:
                return -1  # the table is missing: the stage did not run
        return {
            "judge_unparsable": one("SELECT count(*) FROM row_ledger WHERE asset = 'instruct_judged' "
                                    "AND reason = 'judge_unparsable'"),
            "domain_unknown": one("SELECT count(*) FROM r1_domain_votes WHERE label = 'unknown'"),
            "domain_unknown_traces": one("SELECT count(*) FROM row_ledger WHERE asset = 'r1_medical_traces' "
                                         "AND reason = 'domain:unknown'"),
            "verifier_unparsable": one("SELECT count(*) FROM qa_sample_verdicts WHERE verdict = 'judge_unparsable'"),
            "instruct_kept": one("SELECT count(*) FROM instruct_judged"),
            "qa_kept": one("SELECT count(*) FROM qa_verified"),
            "r1_kept": one("SELECT count(*) FROM r1_medical_traces"),
            "r1_in": one("SELECT count(*) FROM r1_trace_rows"),
            "final_rows": one("SELECT count(*) FROM sft_final"),
        }
    finally:
        con.close()


def _materialize(base: Path) -> tuple[float, dict[str, float], int, dict[str, int]]:
    env = _env(base)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "iimed_assets.cli", "materialize"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (base / "materialize.log").write_text(proc.stdout + proc.stderr)
    per_asset: dict[str, float] = defaultdict(float)
    failed = 0
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            per_asset[m.group(2)] += float(m.group(5))
            failed += m.group(1) == "FAILED"
    return seconds, dict(per_asset), failed, _counts(base / "warehouse.duckdb")


def _start_dev(base: Path, port: int) -> subprocess.Popen:
    env = _env(base)
    return subprocess.Popen([sys.executable, "-m", "iimed_assets.cli", "dev", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["quiet", "dev", "both"], default="both")
    ap.add_argument("--dev-warmup", type=float, default=60.0, help="seconds between starting dev and the run")
    ap.add_argument("--port", type=int, default=3917)
    ap.add_argument("--keep", help="keep the run folders under this directory")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="iimed-default-run-"))
    modes = ["quiet", "dev"] if args.mode == "both" else [args.mode]
    out: dict[str, object] = {}
    try:
        for mode in modes:
            base = root / mode
            shutil.rmtree(base, ignore_errors=True)
            dev = None
            if mode == "dev":
                dev = _start_dev(root / "dev-server", args.port)
                time.sleep(args.dev_warmup)
            try:
                seconds, per_asset, failed, counts = _materialize(base)
            finally:
                if dev is not None:
                    _stop(dev)
            print(f"{mode}: {seconds:,.0f}s, {failed} failed partition runs")
            for asset, s in sorted(per_asset.items(), key=lambda kv: -kv[1]):
                print(f"    {asset:24} {s:7.1f}s")
            print(f"    counts: {counts}", flush=True)
            out[f"{mode}_s"] = round(seconds, 1)
            out[f"{mode}_failed"] = failed
            if mode == modes[0]:
                out.update({k: v for k, v in counts.items()})
                llm_s = sum(per_asset.get(a, 0.0) for a in ("qa_samples", "qa_verified", "r1_cluster_domains",
                                                             "instruct_responses", "instruct_judged"))
                out["model_stages_s"] = round(llm_s, 1)
        if "quiet_s" in out and "dev_s" in out:
            out["dev_over_quiet"] = round(float(out["dev_s"]) / float(out["quiet_s"]), 3)
        out["cpus"] = os.cpu_count()
        out["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
