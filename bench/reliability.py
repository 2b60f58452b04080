"""Issue 21's LLM faults, reproduced with the project's own CLI against a loopback OpenAI-compatible server that
counts every request: what each costs in requests sent against requests needed, and how each run ends.

Run it for this checkout, and for another one (e.g. main before the fix) with `--tree`, under the same load:

    python bench/reliability.py [--tree /path/to/checkout] [--prompts 150] [--kills 5] [--hang-cap 600]

Scenarios (each in fresh temp folders: warehouse, Dagster instance; one `instruct_responses[healthcaremagic]`
partition of `--prompts` distinct prompts built from the bundled ChatDoctor rows):
  kill        kill -9 at a random number of answered requests (seeded), `--kills` times; rerun on a fresh instance;
              requests sent in both runs against the prompts (paid twice = the excess)
  concurrent  two runs of the partition at once on one instance whose `gpu` pool allows 8 (the README's advice
              for a remote fleet): requests sent against the prompts
  empty       the server answers empty, then recovers: requests the rerun sends, rows written
  dies        the server answers 503 from request 80 on: how the run ends, rows written, failed checks
  hang        the server accepts and never answers: how long the stage takes to give up (stopped at --hang-cap)

The server runs from this checkout (the same for both trees); the CLI runs from `--tree` (PYTHONPATH). Both the
old (`IIMED_LLM_*`) and the new (`IIMED_GENERATOR_*`) variables are set, so either tree reads them. Final line:
key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "iimed_assets" / "sources" / "sample" / "chatdoctor" / "chatdoctor5k.jsonl"


class Server:
    """The loopback server in its own process; `count()` -> (requests, max in flight, samples answered)."""

    def __init__(self, latency: float, mode: str = "normal", seconds: float = 3600):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "iimed_assets.testing.openai_loopback", "--latency",
                                      str(latency), "--mode", mode, "--seconds", str(seconds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.url = self.proc.stdout.readline().strip()

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def count(self) -> tuple[int, int, int]:
        a, b, c = self._ask("count").split()[:3]
        return int(a), int(b), int(c)

    def mode(self, name: str) -> None:
        self._ask(f"mode {name}")

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class Workspace:
    """Temp warehouse + instance + source file; runs the CLI of `tree` in it."""

    def __init__(self, tree: Path, prompts: int, url: str, concurrency: int = 4):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
        self.tree = tree
        src = self.dir / "hcm.jsonl"
        lines = SAMPLE.read_text().splitlines()
        with open(src, "w") as fh:
            for i in range(prompts):
                rec = json.loads(lines[i % len(lines)])
                rec["input"] = f"{i}: {rec['input']}"
                fh.write(json.dumps(rec) + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("IIMED_", "DAGSTER_HOME"))}
        self.env.update({"PYTHONPATH": str(tree), "IIMED_WAREHOUSE": str(self.dir / "wh.duckdb"),
                         "IIMED_SOURCE_HEALTHCAREMAGIC": str(src), "PYTHONUNBUFFERED": "1"})
        for prefix in ("IIMED_LLM", "IIMED_GENERATOR"):
            self.env.update({f"{prefix}_BACKEND": "openai", f"{prefix}_BASE_URL": url, f"{prefix}_MODEL": "scripted",
                             f"{prefix}_MAX_CONCURRENCY": str(concurrency)})
        self.homes = 0
        self.home = self.new_home()

    def new_home(self) -> Path:
        self.homes += 1
        home = self.dir / f"dagster_home_{self.homes}"
        home.mkdir()
        shutil.copyfile(self.tree / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
        self.home = home
        return home

    def start(self, asset: str, log: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "iimed_assets.cli", "materialize", "--assets", asset,
                                 "--partitions", "healthcaremagic"], cwd=self.tree,
                                env={**self.env, "DAGSTER_HOME": str(self.home)},
                                stdout=open(self.dir / log, "w"), stderr=subprocess.STDOUT)

    def run(self, asset: str, log: str, timeout: float = 1800) -> tuple[int, str]:
        proc = self.start(asset, log)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            rc = -9
        return rc, (self.dir / log).read_text()

    def rows(self) -> tuple[int, dict]:
        import duckdb

        con = duckdb.connect(str(self.dir / "wh.duckdb"), read_only=True)
        try:
            has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                              "'instruct_responses'").fetchone()[0]
            rows = con.execute("SELECT count(*) FROM instruct_responses").fetchone()[0] if has else 0
            ledger = dict(con.execute("SELECT reason, count(*) FROM row_ledger WHERE asset = 'instruct_responses' "
                                      "GROUP BY 1").fetchall())
        finally:
            con.close()
        return rows, ledger

    def set_pool(self, pool: str, slots: int) -> None:
        code = ("import dagster as dg\nwith dg.DagsterInstance.get() as i:\n"
                f"    i.event_log_storage.set_concurrency_slots({pool!r}, {slots})\n")
        subprocess.run([sys.executable, "-c", code], env={**self.env, "DAGSTER_HOME": str(self.home)}, check=True)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _outcome(log: str) -> str:
    """`ok rows=150`, `FAILED rows=- failed=llm_failure_share` from the CLI's line for the partition."""
    import re

    line = next((ln for ln in log.splitlines() if "instruct_responses" in ln and
                 ln.split()[:1] and ln.split()[0] in ("ok", "warn", "FAILED")), "")
    if not line:
        return "no outcome line"
    rows = re.search(r"rows=\s*(\S+)", line)
    failed = re.search(r"failed checks: (\S+)", line)
    warned = re.search(r"warnings: (\S+)", line)
    return " ".join([line.split()[0], f"rows={rows.group(1) if rows else '?'}"] +
                    ([f"failed={failed.group(1)}"] if failed else []) + ([f"warned={warned.group(1)}"] if warned else []))


def kill_trials(tree: Path, prompts: int, kills: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for trial in range(kills):
        server = Server(latency=0.2)
        ws = Workspace(tree, prompts, server.url)
        try:
            ws.run("instruct_prompt_rows", "prompts.log")
            at = rng.randint(5, prompts - 10)
            proc = ws.start("instruct_responses", "first.log")
            deadline = time.monotonic() + 600
            while server.count()[2] < at and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            first, _, answered = server.count()
            ws.new_home()  # the issue: a rerun on a fresh instance
            rc, log = ws.run("instruct_responses", "second.log")
            total = server.count()[0]
            rows, _ = ws.rows()
            out.append({"kill_at_answered": answered, "sent_first": first, "sent_rerun": total - first,
                        "sent": total, "needed": prompts, "paid_twice": total - prompts, "rows": rows, "rc": rc})
            print(f"kill trial {trial}: {out[-1]}", flush=True)
        finally:
            server.close()
            ws.close()
    return out


def concurrent(tree: Path, prompts: int) -> dict:
    server = Server(latency=0.2)
    ws = Workspace(tree, prompts, server.url, concurrency=8)
    try:
        ws.run("instruct_prompt_rows", "prompts.log")
        ws.set_pool("gpu", 8)
        procs = [ws.start("instruct_responses", f"run{k}.log") for k in range(2)]
        rcs = [p.wait(timeout=1800) for p in procs]
        sent = server.count()[0]
        rows, _ = ws.rows()
        result = {"sent": sent, "needed": prompts, "paid_twice": sent - prompts, "rcs": rcs, "rows": rows}
        print(f"concurrent: {result}", flush=True)
        return result
    finally:
        server.close()
        ws.close()


def empty_then_recover(tree: Path, prompts: int) -> dict:
    server = Server(latency=0.0, mode="empty")
    ws = Workspace(tree, prompts, server.url)
    try:
        ws.run("instruct_prompt_rows", "prompts.log")
        _, first_log = ws.run("instruct_responses", "first.log")
        first = server.count()[0]
        rows_first, ledger_first = ws.rows()
        server.mode("normal")
        _, second_log = ws.run("instruct_responses", "second.log")
        second = server.count()[0] - first
        rows, ledger = ws.rows()
        result = {"sent_first": first, "first": _outcome(first_log), "rows_first": rows_first,
                  "ledger_first": ledger_first, "sent_after_recovery": second, "second": _outcome(second_log),
                  "rows": rows, "ledger": ledger}
        print(f"empty: {result}", flush=True)
        return result
    finally:
        server.close()
        ws.close()


def server_dies(tree: Path, prompts: int) -> dict:
    server = Server(latency=0.0)
    ws = Workspace(tree, prompts, server.url)
    try:
        ws.run("instruct_prompt_rows", "prompts.log")
        server.mode("fail-after-80")
        rc, log = ws.run("instruct_responses", "run.log")
        rows, ledger = ws.rows()
        result = {"rc": rc, "outcome": _outcome(log), "rows": rows, "ledger": ledger, "sent": server.count()[0]}
        print(f"dies: {result}", flush=True)
        return result
    finally:
        server.close()
        ws.close()


def hang(tree: Path, prompts: int, cap: float) -> dict:
    server = Server(latency=0.0, mode="hang", seconds=cap + 120)
    ws = Workspace(tree, prompts, server.url)
    try:
        ws.run("instruct_prompt_rows", "prompts.log")
        started = time.monotonic()
        rc, log = ws.run("instruct_responses", "run.log", timeout=cap)
        seconds = time.monotonic() - started
        result = {"seconds": round(seconds, 1), "stopped_at_cap": rc == -9, "rc": rc, "outcome": _outcome(log),
                  "sent": server.count()[0]}
        print(f"hang: {result}", flush=True)
        return result
    finally:
        server.close()
        ws.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose CLI runs (default: this one)")
    ap.add_argument("--prompts", type=int, default=150)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--hang-prompts", type=int, default=20)
    ap.add_argument("--hang-cap", type=float, default=600.0)
    ap.add_argument("--only", nargs="*", default=["kill", "concurrent", "empty", "dies", "hang"])
    args = ap.parse_args()
    tree = args.tree.resolve()
    results = {}
    if "kill" in args.only:
        results["kill"] = kill_trials(tree, args.prompts, args.kills, args.seed)
    if "concurrent" in args.only:
        results["concurrent"] = concurrent(tree, args.prompts)
    if "empty" in args.only:
        results["empty"] = empty_then_recover(tree, args.prompts)
    if "dies" in args.only:
        results["dies"] = server_dies(tree, args.prompts)
    if "hang" in args.only:
        results["hang"] = hang(tree, args.hang_prompts, args.hang_cap)
    line = {"tree": tree.name, "prompts": args.prompts}
    if "kill" in results:
        line["kill_paid_twice"] = ",".join(str(t["paid_twice"]) for t in results["kill"])
        line["kill_sent_total"] = sum(t["sent"] for t in results["kill"])
        line["kill_needed_total"] = sum(t["needed"] for t in results["kill"])
    if "concurrent" in results:
        line["concurrent_sent"] = results["concurrent"]["sent"]
    if "empty" in results:
        line["empty_rerun_sent"] = results["empty"]["sent_after_recovery"]
        line["empty_rerun_rows"] = results["empty"]["rows"]
    if "dies" in results:
        line["dies_outcome"] = results["dies"]["outcome"].split()[0] if results["dies"]["outcome"] else "?"
        line["dies_rows"] = results["dies"]["rows"]
    if "hang" in results:
        line["hang_s"] = results["hang"]["seconds"]
        line["hang_stopped_at_cap"] = results["hang"]["stopped_at_cap"]
    print(" ".join(f"{k}={v}" for k, v in line.items()))


if __name__ == "__main__":
    main()
