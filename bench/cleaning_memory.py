"""Peak memory of the cleaning stages as the row count grows: sft_deduped (and with --decontam
sft_decontaminated; real asset code, real DuckDB file with memory_limit --duckdb-memory, default 1GB) on generated candidates, at --small
and --rows. Responses are
~120 words of real medical text (12 spans of 10 words from random places in ChatDoctor answers and HuatuoGPT-o1
reasoning, so distinct responses share few 4-grams, as distinct real answers do) with 5% exact copies and 5% copies
with one word edited (near-duplicates at Jaccard ~0.95); prompts are real clean prompts. An earlier version took
120-word windows of one 300k-word text: at 1M rows every response then overlapped ~100 others above the threshold,
a density no real dataset has (docs/cleaning.md).
The setup (generating the rows, loading DuckDB with a 1GB limit) runs in one process and the stages in a fresh one
on the warehouse it left, so the stages' peak (Linux VmHWM) holds nothing of the data generation; imports_rss_mb is
that process's RSS after importing dagster and the assets, before any row is read.
Final line: rows=... setup_peak_rss_mb=... peak_rss_mb_small=... peak_rss_mb=... rss_growth=... rows_per_s=..."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(rows: int, workdir: str) -> None:
    import random

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from _texts import clean_prompts, responses

    wh_path = Path(workdir) / "warehouse.duckdb"
    rng = random.Random(0)
    words = " ".join(responses()).split()
    prompts = clean_prompts()
    staged = Path(workdir) / "cands.parquet"
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("response", pa.string())])
    with pq.ParquetWriter(staged, schema) as w:
        recent: list[str] = []
        for start in range(0, rows, 50_000):
            ids, ps, rs = [], [], []
            for i in range(start, min(rows, start + 50_000)):
                r = rng.random()
                if r < 0.05 and recent:
                    text = rng.choice(recent)
                elif r < 0.10 and recent:
                    ws = rng.choice(recent).split()
                    ws[rng.randrange(len(ws))] = "edited"
                    text = " ".join(ws)
                else:  # 12 spans of 10 words from anywhere in the corpus: distinct texts share few 4-grams
                    spans = []
                    for _ in range(12):
                        k = rng.randrange(len(words) - 10)
                        spans += words[k:k + 10]
                    text = " ".join(spans) + f" case {i}"
                recent = (recent + [text])[-1000:]
                ids.append(f"r{i:08d}")
                ps.append(prompts[i % len(prompts)])
                rs.append(text)
            w.write_table(pa.table({"id": ids, "prompt": ps, "response": rs}, schema=schema))
    con = duckdb.connect(str(wh_path), config={"memory_limit": "1GB"})  # the setup must not dominate the peak
    con.execute("CREATE TABLE sft_candidates AS SELECT id, 'bench' AS source, 'bench' AS section, prompt, "
                "[{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': response}] AS messages, "
                "NULL::VARCHAR AS gold_answer, NULL::MAP(VARCHAR, VARCHAR) AS options, 'en' AS language, "
                "NULL::JSON AS meta, 'bench' AS origin, NULL::JSON AS provenance, "
                "row_number() OVER (ORDER BY id) AS cand_order FROM read_parquet(?)", [str(staged)])
    # eval items: the real bundled eval sets
    from _texts import eval_texts
    ev = eval_texts()
    con.execute("CREATE TABLE eval_items (id VARCHAR, source VARCHAR, prompt VARCHAR, meta JSON)")
    con.executemany("INSERT INTO eval_items VALUES (?, ?, ?, ?)",
                    [[i, s, t[-1], json.dumps({"question": t[0]})] for s, i, t in ev])
    con.close()
    print(json.dumps({"rows": rows, "setup_peak_rss_mb": round(_peak_mb())}))


def stage(workdir: str, with_decontam: bool, duckdb_memory: str) -> None:
    """The stages alone, in a fresh process on the warehouse `child` left: its peak is the stages' own (plus the
    imports, reported apart)."""
    import dagster as dg

    from iimed_assets.assets.cleaning import sft_decontaminated, sft_deduped
    from iimed_assets.resources.warehouse import Warehouse

    imports_rss = _rss_mb()
    t = time.perf_counter()
    stages = [sft_deduped, sft_decontaminated] if with_decontam else [sft_deduped]
    res = dg.materialize(stages, resources={"warehouse": Warehouse(path=str(Path(workdir) / "warehouse.duckdb"),
                                                                   memory_limit=duckdb_memory)},
                         run_config={"ops": {"sft_deduped": {"config": {"scratch_memory": duckdb_memory}}}})
    assert res.success
    elapsed = time.perf_counter() - t
    print(json.dumps({"peak_rss_mb": round(_peak_mb()), "imports_rss_mb": round(imports_rss),
                      "seconds": round(elapsed, 1)}))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    """VmHWM (peak RSS since the last reset) on Linux, else the process's maximum RSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(rows: int, with_decontam: bool, duckdb_memory: str) -> dict:
    """Setup and stages in two fresh processes, so the stage's peak holds nothing of the data generation."""
    with tempfile.TemporaryDirectory() as tmp:
        result = {}
        for mode in ("setup", "stage"):
            out = subprocess.run([sys.executable, __file__, "--child", str(rows), tmp, str(int(with_decontam)), mode,
                                  duckdb_memory],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))
        return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[5] == "setup":
            child(int(sys.argv[2]), sys.argv[3])
        else:
            stage(sys.argv[3], sys.argv[4] == "1", sys.argv[6])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--decontam", action="store_true",
                    help="also run sft_decontaminated (its exact fuzzy step costs ~10 ms per prompt on 2 cores)")
    ap.add_argument("--duckdb-memory", default="1GB",
                    help="memory_limit of the warehouse connection and of sft_deduped's scratch database")
    args = ap.parse_args()
    small, big = run(args.small, args.decontam, args.duckdb_memory), run(args.rows, args.decontam, args.duckdb_memory)
    print(f"stages={'sft_deduped+sft_decontaminated' if args.decontam else 'sft_deduped'} "
          f"duckdb_memory={args.duckdb_memory} rows_small={small['rows']} "
          f"rows={big['rows']} setup_peak_rss_mb_small={small['setup_peak_rss_mb']} "
          f"setup_peak_rss_mb={big['setup_peak_rss_mb']} peak_rss_mb_small={small['peak_rss_mb']} "
          f"peak_rss_mb={big['peak_rss_mb']} rss_growth={big['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
          f"imports_rss_mb={big['imports_rss_mb']} seconds_small={small['seconds']} seconds={big['seconds']} rows_per_s={big['rows'] / big['seconds']:.0f}")


if __name__ == "__main__":
    main()
