"""`iimed-assets materialize`: run every partition of every asset, in graph order, in this process.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default: ./.dagster_home in the
checkout), so `dagster dev` shows them afterwards. This is the one-command default run on the bundled
sample; in the UI the same thing is "Materialize all" + backfills.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _default_dagster_home() -> Path:
    repo = Path(__file__).resolve().parents[1]
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / ".dagster_home"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iimed-assets")
    sub = parser.add_subparsers(dest="command", required=True)
    mat = sub.add_parser("materialize", help="materialize every partition of the selected assets")
    mat.add_argument("--assets", nargs="*", help="asset names (default: all, in graph order)")
    mat.add_argument("--partitions", nargs="*", help="only these partition keys")
    sub.add_parser("sources", help="list the source registry")
    args = parser.parse_args(argv)

    if args.command == "sources":
        from iimed_assets.resources.catalog import SourceCatalog
        from iimed_assets.sources.registry import SOURCES

        catalog = SourceCatalog()
        for spec in SOURCES:
            print(f"{spec.section:17} {spec.name:32} {catalog.origin(spec.name)}")
        return 0

    os.environ.setdefault("DAGSTER_HOME", str(_default_dagster_home()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg

    from iimed_assets.definitions import MATERIALIZE_ORDER, default_resources

    selected = [a for a in MATERIALIZE_ORDER if not args.assets or a.key.to_user_string() in args.assets]
    if args.assets and len(selected) != len(args.assets):
        known = ", ".join(a.key.to_user_string() for a in MATERIALIZE_ORDER)
        parser.error(f"unknown asset in {args.assets}; known: {known}")
    failures = []
    with dg.DagsterInstance.get() as instance:
        for asset in selected:
            name = asset.key.to_user_string()
            keys = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
            for key in keys:
                if args.partitions and key not in args.partitions:
                    continue
                started = time.perf_counter()
                result = dg.materialize([asset], partition_key=key, instance=instance,
                                        resources=default_resources(), raise_on_error=False)
                rows = "-"
                for event in result.get_asset_materialization_events():
                    md = event.materialization.metadata
                    if "dagster/row_count" in md:
                        rows = md["dagster/row_count"].value

                evaluations = [e for e in result.get_asset_check_evaluations() if not e.passed]
                failed_checks = [e.check_name for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR]
                warned = [e.check_name for e in evaluations if e.severity == dg.AssetCheckSeverity.WARN]
                status = "FAILED" if not result.success or failed_checks else ("warn" if warned else "ok")
                if status == "FAILED":
                    failures.append((name, key, failed_checks))
                notes = (" failed checks: " + ",".join(failed_checks) if failed_checks else "") + \
                        (" warnings: " + ",".join(warned) if warned else "")
                print(f"{status:6} {name:24} {key or '':32} rows={rows!s:>7} {time.perf_counter() - started:6.1f}s{notes}",
                      flush=True)
    print(f"\n{len(failures)} failed partition runs" if failures else "\nall partitions materialized")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
