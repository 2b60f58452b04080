"""Loader throughput and peak memory on a generated local source, streaming vs. load-everything.

For N in (small, large) rows it runs, each in a fresh process so peak RSS is its own:
  loader    - SourceCatalog local override -> ingest (read, normalise, staged Parquet), no warehouse
  streaming - the real path: loader + the warehouse swap (DuckDB memory_limit = $BENCH_DUCKDB_MEMORY, 512MB)
  baseline  - the naive path: read every line into a list, build one Arrow table, insert into DuckDB

Memory is flat if the streaming peak at 1M rows is close to its peak at 100k rows.
Final line: key=value pairs (rows_per_s, baseline_rows_per_s, ratio, peak RSS for both sizes, growth).

    python bench/load_sources.py [--rows 1000000] [--small 100000]

`--against /other/checkout` instead times the loader of this checkout and of another one (e.g. main before a
change) on the same file, alternating `--pairs` times, so both see the same machine load; final line:
rows_per_s=… other_rows_per_s=… ratio=… (median of the pairs).

    python bench/load_sources.py --against /tmp/main-copy --rows 200000 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("patient presents with acute chest pain fever cough dyspnea history of hypertension diabetes "
         "examination reveals tachycardia murmur edema laboratory shows elevated troponin leukocytosis "
         "which of the following is the most likely diagnosis next best step in management").split()


# DuckDB's buffer pool is bounded by its memory_limit (it spills beyond it); the loader itself streams.
DUCKDB_MEMORY = os.environ.get("BENCH_DUCKDB_MEMORY", "512MB")


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(rows):
            q = " ".join(rng.choices(WORDS, k=40)) + "?"
            a = " ".join(rng.choices(WORDS, k=60)) + "."
            fh.write(json.dumps({"instruction": "Answer as a doctor.", "input": f"{i} {q}", "output": a}) + "\n")


def run_streaming(path: str, db: str) -> dict:
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.resources.warehouse import Swap, Warehouse
    from iimed_assets.sources.ingest import ingest

    t0 = time.perf_counter()
    catalog = SourceCatalog(overrides={"healthcaremagic": path})
    wh = Warehouse(path=db, memory_limit=DUCKDB_MEMORY)
    with tempfile.TemporaryDirectory() as tmp:
        res = ingest(catalog.read("healthcaremagic"), source="healthcaremagic", section="instruct",
                     staging_dir=Path(tmp), batch_rows=catalog.batch_rows)
        wh.swap(Swap.source_partition("instruct_prompt_rows", "healthcaremagic", res.rows_path, res.ledger_path),
                run_id="bench")
    written = wh.fetch_one("SELECT count(*) FROM instruct_prompt_rows")[0]
    return {"rows": res.rows_read, "written": written, "seconds": time.perf_counter() - t0}


def run_ingest_only(path: str, db: str) -> dict:
    """The loader alone (read, normalise, stage Parquet), without the warehouse swap."""
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.sources.ingest import ingest

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = ingest(SourceCatalog(overrides={"healthcaremagic": path}).read("healthcaremagic"),
                     source="healthcaremagic", section="instruct", staging_dir=Path(tmp))
    return {"rows": res.rows_read, "written": res.rows_staged, "seconds": time.perf_counter() - t0}


def run_baseline(path: str, db: str) -> dict:
    """What a loader that holds the source in memory does: same normalisation, one big table."""
    import duckdb
    import pyarrow as pa

    from iimed_assets.core.normalize import normalize_record
    from iimed_assets.core.schema import SAMPLE_SCHEMA
    from iimed_assets.sources.registry import get_source

    t0 = time.perf_counter()
    fm = get_source("healthcaremagic").fields
    with open(path) as fh:
        records = [json.loads(line) for line in fh]
    rows = [normalize_record(r, fm, source="healthcaremagic", section="instruct") for r in records]
    arrow_rows = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    con = duckdb.connect(db)
    con.register("arrow_rows", arrow_rows)
    con.execute("CREATE TABLE t AS SELECT * FROM arrow_rows")
    written = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    return {"rows": len(records), "written": written, "seconds": time.perf_counter() - t0}


def child(mode: str, path: str, db: str) -> None:
    out = {"streaming": run_streaming, "loader": run_ingest_only, "baseline": run_baseline}[mode](path, db)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(mode: str, path: Path, workdir: Path) -> dict:
    db = workdir / f"{mode}-{path.stem}.duckdb"
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(db)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def paired(other: Path, rows: int, pairs: int) -> None:
    """The loader of this checkout against another checkout's, alternating on one generated file."""
    import statistics

    scripts = {"this": Path(__file__).resolve(), "other": other.resolve() / "bench" / "load_sources.py"}
    times: dict[str, list[float]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        src = Path(tmp) / "src.jsonl"
        generate(src, rows)
        for k in range(pairs):
            for name in (("this", "other") if k % 2 == 0 else ("other", "this")):
                env = {key: v for key, v in os.environ.items() if key != "PYTHONPATH"}  # each checkout its own code
                proc = subprocess.run([sys.executable, str(scripts[name]), "--child", "loader", str(src),
                                       str(Path(tmp) / "x.duckdb")], capture_output=True, text=True, check=True,
                                      env=env)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                assert r["rows"] == r["written"] == rows, r
                times[name].append(r["seconds"])
                print(f"pair {k} {name:5} {rows / r['seconds']:9,.0f} rows/s", flush=True)
    this, that = statistics.median(times["this"]), statistics.median(times["other"])
    print(f"rows={rows} pairs={pairs} rows_per_s={rows / this:.0f} other_rows_per_s={rows / that:.0f} "
          f"ratio={that / this:.3f} this_s={','.join(f'{t:.2f}' for t in times['this'])} "
          f"other_s={','.join(f'{t:.2f}' for t in times['other'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "DB"))
    ap.add_argument("--against", type=Path, help="another checkout: time both loaders, paired")
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.against:
        paired(args.against, args.rows, args.pairs)
        return
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        results = {}
        for n in (args.small, args.rows):
            src = work / f"src-{n}.jsonl"
            generate(src, n)
            size_mb = src.stat().st_size / 2**20
            for mode in ("loader", "streaming", "baseline"):
                r = measure(mode, src, work)
                assert r["rows"] == r["written"] == n, r
                results[(mode, n)] = r
                print(f"{mode:9} rows={n:>9,} file={size_mb:7.1f}MB time={r['seconds']:7.1f}s "
                      f"rows/s={n / r['seconds']:>9,.0f} peak_rss={r['peak_rss_mb']:8.1f}MB", flush=True)
    big, small = args.rows, args.small
    s_big, s_small = results[("streaming", big)], results[("streaming", small)]
    b_big, b_small = results[("baseline", big)], results[("baseline", small)]
    l_big, l_small = results[("loader", big)], results[("loader", small)]
    rps = big / s_big["seconds"]
    brps = big / b_big["seconds"]
    print(
        f"rows={big} rows_per_s={rps:.0f} baseline_rows_per_s={brps:.0f} ratio={rps / brps:.2f} "
        f"peak_rss_mb_small={s_small['peak_rss_mb']:.0f} peak_rss_mb={s_big['peak_rss_mb']:.0f} "
        f"rss_growth={s_big['peak_rss_mb'] / s_small['peak_rss_mb']:.2f} "
        f"baseline_peak_rss_mb_small={b_small['peak_rss_mb']:.0f} baseline_peak_rss_mb={b_big['peak_rss_mb']:.0f} "
        f"baseline_rss_growth={b_big['peak_rss_mb'] / b_small['peak_rss_mb']:.2f} "
        f"memory_ratio={b_big['peak_rss_mb'] / s_big['peak_rss_mb']:.2f} "
        f"loader_peak_rss_mb_small={l_small['peak_rss_mb']:.0f} loader_peak_rss_mb={l_big['peak_rss_mb']:.0f} "
        f"loader_rss_growth={l_big['peak_rss_mb'] / l_small['peak_rss_mb']:.2f} duckdb_memory_limit={DUCKDB_MEMORY}"
    )


if __name__ == "__main__":
    main()
