"""One DuckDB writer per file: parallel partition runs wait for the lock instead of failing."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from iimed_assets.resources.warehouse import Warehouse, WarehouseLockTimeout

REPO = Path(__file__).resolve().parents[1]

HOLD_LOCK = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS t (x INT)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_connect_waits_for_another_process(tmp_path):
    path = tmp_path / "w.duckdb"
    holder = _hold_lock(path, 2.0)
    try:
        with pytest.raises(duckdb.IOException):  # the raw error the warehouse protects against
            duckdb.connect(str(path))
        started = time.monotonic()
        with Warehouse(path=str(path), lock_timeout_s=60).connect() as con:
            assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert time.monotonic() - started > 0.5  # it really waited for the holder
    finally:
        holder.wait(timeout=30)


def test_connect_gives_up_with_a_clear_error(tmp_path):
    path = tmp_path / "w.duckdb"
    holder = _hold_lock(path, 5.0)
    try:
        with pytest.raises(WarehouseLockTimeout, match="stayed locked"):
            with Warehouse(path=str(path), lock_timeout_s=0.5).connect():
                pass
    finally:
        holder.wait(timeout=30)


@pytest.mark.slow
def test_parallel_partition_runs_under_multiprocess_executor(tmp_path):
    """Six partition runs at once, each through the CLI with the default multiprocess executor."""
    warehouse = tmp_path / "w.duckdb"
    keys = ["medbullets_op4", "medbullets_op5", "afrimedqa", "liveqa_med", "medicationqa", "mmlu_pro_health"]

    def run(key: str) -> subprocess.CompletedProcess:
        home = tmp_path / f"home-{key}"
        home.mkdir()
        env = dict(os.environ, IIMED_WAREHOUSE=str(warehouse), DAGSTER_HOME=str(home), IIMED_SOURCE_MODE="sample")
        return subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "iimed_assets.definitions",
             "--select", "eval_items", "--partition", key],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400)

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        results = list(pool.map(run, keys))
    for key, res in zip(keys, results):
        assert res.returncode == 0, f"{key}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        assert "lock" not in res.stderr.lower() or "Conflicting lock" not in res.stderr
        assert "multiprocess" in (res.stdout + res.stderr).lower()
    con = duckdb.connect(str(warehouse))
    counts = dict(con.execute("SELECT source, count(*) FROM eval_items GROUP BY 1").fetchall())
    assert counts == {"medbullets_op4": 308, "medbullets_op5": 308, "afrimedqa": 174, "liveqa_med": 104,
                      "medicationqa": 690, "mmlu_pro_health": 818}
