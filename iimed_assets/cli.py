"""`iimed-assets materialize`: run every partition of every asset, in graph order, in this process.
`iimed-assets dev`: the Dagster UI + daemon (`dagster dev`) on the same instance.
`iimed-assets plan`: before any LLM call, what each model stage would send and cost (final line key=value).
`iimed-assets report`: this warehouse next to the published card, and every source's funnel, in the terminal.
Materialize, dev and plan take `--profile laptop|card` (= IIMED_PROFILE); `materialize --set asset.field=value`
overrides one stage setting of the profile (repeatable).

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default: ./.dagster_home in the
checkout), so `dagster dev` shows them afterwards. This is the one-command default run on the bundled
sample; in the UI the same thing is "Materialize all" + backfills.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def _default_dagster_home() -> Path:
    base = REPO if (REPO / "pyproject.toml").exists() else Path.cwd()
    return base / ".dagster_home"


def prepare_dagster_home() -> Path:
    """$DAGSTER_HOME (default ./.dagster_home), seeded with the project dagster.yaml when it has none."""
    os.environ.setdefault("DAGSTER_HOME", str(_default_dagster_home()))
    home = Path(os.environ["DAGSTER_HOME"]).resolve()
    home.mkdir(parents=True, exist_ok=True)
    project_yaml = REPO / ".dagster_home" / "dagster.yaml"
    instance_yaml = home / "dagster.yaml"
    if project_yaml.exists() and not instance_yaml.exists():
        shutil.copyfile(project_yaml, instance_yaml)
        print(f"instance settings: copied {project_yaml} -> {instance_yaml}", file=sys.stderr)
    elif project_yaml.exists() and instance_yaml.read_bytes() != project_yaml.read_bytes():
        print(f"instance settings: {instance_yaml} differs from the project's {project_yaml} (kept yours)",
              file=sys.stderr)
    return home


def parse_settings(items: list[str] | None) -> dict[str, dict[str, object]]:
    """`--set qa_samples.n=6 --set instruct_judged.threshold=7` -> {asset: {field: value}} (values read as JSON
    when they parse, else as text)."""
    out: dict[str, dict[str, object]] = {}
    for item in items or []:
        target, sep, raw = item.partition("=")
        asset, dot, name = target.partition(".")
        if not sep or not dot or not asset or not name:
            raise ValueError(f"--set {item!r}: expected asset.field=value, e.g. qa_samples.n=6")
        try:
            value: object = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(asset, {})[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iimed-assets")
    sub = parser.add_subparsers(dest="command", required=True)
    mat = sub.add_parser("materialize", help="materialize every partition of the selected assets")
    mat.add_argument("--assets", nargs="*", help="asset names (default: all, in graph order)")
    mat.add_argument("--partitions", nargs="*", help="only these partition keys")
    mat.add_argument("--set", action="append", metavar="ASSET.FIELD=VALUE", dest="settings",
                     help="override one stage setting of the profile, e.g. qa_samples.n=6 (repeatable)")
    src = sub.add_parser("sources", help="list the source registry, or probe the sources (--probe)")
    src.add_argument("names", nargs="*", metavar="SOURCE", help="only these sources (default: all)")
    src.add_argument("--probe", action="store_true",
                     help="read the first rows of each source through the full run's conversion and report "
                          "ok/failed, field coverage, an example row and the reason for a failure")
    src.add_argument("--rows", type=int, default=20, help="native records to read per source with --probe")
    src.add_argument("--mode", choices=("hub", "sample"), default=None,
                     help="where to read from with --probe (default: hub; $IIMED_HUB_MIRROR and "
                          "$IIMED_SOURCE_<NAME> apply)")
    plan = sub.add_parser("plan", help="before any LLM call: per model stage, the requests, tokens, cache hits, cost "
                                       "and hours a materialization would take (final line key=value)")
    plan.add_argument("--assets", nargs="*", help="only these LLM stages (default: all)")
    plan.add_argument("--scale", choices=("warehouse", "card"), default="warehouse",
                      help="warehouse: the rows stored now (default); card: the card's counts (registry + recipe) "
                           "with the request shapes of the stored rows")
    plan.add_argument("--set", action="append", metavar="ASSET.FIELD=VALUE", dest="settings",
                      help="a stage setting, as for materialize (e.g. qa_samples.n=6)")
    plan.add_argument("--output-tokens", action="append", metavar="STAGE_OR_ROLE=N", default=[],
                      help="state the expected completion tokens per sample (e.g. judge=180, qa_samples=2500)")
    rep = sub.add_parser("report", help="print this warehouse's counts next to the published card's, per section "
                                        "and per source, and every source's funnel through the stages")
    rep.add_argument("--warehouse", help="DuckDB file (default: $IIMED_WAREHOUSE or ./data/warehouse.duckdb)")
    rep.add_argument("--width", type=int, default=48, help="clip table cells to this many characters")
    sub.add_parser("settings", help="every environment variable iimed-assets reads: what is set now, the default, "
                                    "what uses it (secrets shown only as set/unset)")
    dev = sub.add_parser("dev", help="start the Dagster UI and daemon (dagster dev) on this project's instance")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", default="3000")
    for p in (mat, dev, plan):
        p.add_argument("--profile", choices=["laptop", "card"],
                       help="the recipe profile (default: $IIMED_PROFILE, else laptop)")
    args = parser.parse_args(argv)
    if getattr(args, "profile", None):
        os.environ["IIMED_PROFILE"] = args.profile  # before any asset module loads: it sets their defaults

    if args.command == "sources":
        return _sources(args, parser)
    if args.command == "plan":
        return _plan(args, parser)
    if args.command == "report":
        return _report(args)
    if args.command == "settings":
        return _settings()

    home = prepare_dagster_home()
    if args.command == "dev":
        from iimed_assets.resources.defaults import alerts_from_env

        problem = alerts_from_env().problem()  # validated when configured: a bad URL would lose every alert
        if problem:
            print(f"iimed-assets dev: {problem}. Fix it (https://hooks.example/...) or unset it.", file=sys.stderr)
            return 2
        dagster = Path(sys.executable).with_name("dagster")
        cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-h", args.host, "-p", str(args.port),
               "-m", "iimed_assets.definitions"]
        print(f"DAGSTER_HOME={home} {' '.join(cmd)}", file=sys.stderr, flush=True)
        os.execvp(cmd[0], cmd)

    import dagster as dg

    from iimed_assets.assets.graph import MATERIALIZE_ORDER
    from iimed_assets.profiles import active_profile
    from iimed_assets.resources.defaults import default_resources
    from iimed_assets.runner import materialize_in_order

    known = [a.key.to_user_string() for a in MATERIALIZE_ORDER]
    selected = [a for a in MATERIALIZE_ORDER if not args.assets or a.key.to_user_string() in args.assets]
    if args.assets and len(selected) != len(args.assets):
        parser.error(f"unknown asset in {args.assets}; known: {', '.join(known)}")
    try:
        settings = parse_settings(args.settings)
    except ValueError as exc:
        parser.error(str(exc))
    if set(settings) - set(known):
        parser.error(f"--set names unknown assets {sorted(set(settings) - set(known))}")
    profile = active_profile()
    print(f"profile: {profile.name} ({profile.description})", flush=True)
    with dg.DagsterInstance.get() as instance:
        outcomes = materialize_in_order(selected, instance=instance, resources=default_resources(profile),
                                        partitions=args.partitions, log=lambda line: print(line, flush=True),
                                        tags={"iimed/profile": profile.name}, config=settings)
    failures = [o for o in outcomes if o.status == "FAILED"]
    print(f"\n{len(failures)} failed partition runs" if failures else "\nall partitions materialized")
    return 1 if failures else 0


def _plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`iimed-assets plan [--profile P] [--assets ...] [--scale warehouse|card] [--output-tokens judge=180]`."""
    from iimed_assets.planning import LLM_STAGES, STAGE_ROLE, plan_run
    from iimed_assets.profiles import active_profile
    from iimed_assets.resources.defaults import default_resources

    unknown = sorted(set(args.assets or []) - set(LLM_STAGES))
    if unknown:
        parser.error(f"--assets {unknown}: the LLM stages are {', '.join(LLM_STAGES)}")
    try:
        settings = parse_settings(args.settings)
        stated = {k: float(v) for k, _, v in (item.partition("=") for item in args.output_tokens)}
    except ValueError as exc:
        parser.error(str(exc))
    if set(stated) - set(LLM_STAGES) - set(STAGE_ROLE.values()):
        parser.error(f"--output-tokens names neither a stage nor a role: {sorted(stated)}")
    profile = active_profile()
    resources = default_resources(profile)
    warehouse = resources["warehouse"]
    plan = plan_run(warehouse, {r: resources[r] for r in ("generator", "classifier", "judge")}, profile,
                    scale=args.scale, assets=args.assets, settings=settings, output_tokens=stated)
    print(f"profile: {profile.name} ({profile.description})")
    print(f"scale: {args.scale}; warehouse: {warehouse.database}")
    if not plan.stages:
        print("no LLM stage has input rows yet: materialize the inputs first, e.g. iimed-assets materialize --assets "
              "qa_seed_rows instruct_prompt_rows r1_trace_rows r1_prompt_embeddings r1_clusters")
    print(plan.table())
    print("\nhow each figure was obtained:")
    for line in plan.basis_lines():
        print(f"  - {line}")
    print("assumptions:")
    for line in plan.assumptions:
        print(f"  - {line}")
    print(plan.key_values())
    return 0


def _settings() -> int:
    """`iimed-assets settings`: the table of settings.py with the values set in this shell."""
    from iimed_assets import settings
    from iimed_assets.core.markdown import markdown_table

    print(markdown_table(["variable", "now", "default", "used by", "what"], settings.table(), 90))
    return 0


def _sources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`iimed-assets sources [--probe [--rows N] [--mode hub|sample]] [SOURCE...]`."""
    from iimed_assets.resources.defaults import catalog_from_env
    from iimed_assets.sources.registry import BY_NAME, SOURCES

    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown source(s) {unknown}; known: {', '.join(sorted(BY_NAME))}")
    specs = [s for s in SOURCES if not args.names or s.name in args.names]
    if not args.probe:
        catalog = catalog_from_env(mode=args.mode)
        for spec in specs:
            print(f"{spec.section:17} {spec.name:32} {catalog.origin(spec.name)}")
        return 0

    from iimed_assets.sources.probe import probe_source

    catalog = catalog_from_env(mode=args.mode or "hub")
    failed = 0
    for spec in specs:
        result = probe_source(spec, lambda: catalog.read(spec.name), origin=catalog.origin(spec.name),
                              hub_layout=catalog.hub_layout(spec.name), expects=catalog.expectations(spec),
                              rows=args.rows)
        failed += not result.ok
        print("\n".join(result.lines()), flush=True)
    print(f"\n{len(specs) - failed} ok, {failed} failed (first {args.rows} records per source)")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    """`iimed-assets report [--warehouse PATH]`: the published-vs-run and funnel tables of the current warehouse."""
    import re

    from iimed_assets.assets.cleaning.export import published_figures
    from iimed_assets.assets.cleaning.funnel import current_funnel
    from iimed_assets.core import funnel, report, runs
    from iimed_assets.core.card import CardInputs, stage_lines
    from iimed_assets.resources.defaults import warehouse_from_env
    from iimed_assets.resources.warehouse import Warehouse

    warehouse = Warehouse(path=args.warehouse) if args.warehouse else warehouse_from_env()
    if not warehouse.database.exists():
        print(f"no warehouse at {warehouse.database}: materialize first (iimed-assets materialize), or pass "
              "--warehouse", file=sys.stderr)
        return 2
    rows, _ = current_funnel(warehouse)
    published = published_figures()
    final, read = funnel.final_rows(rows), funnel.read_rows(rows)
    sources = sorted({(r.section, r.source) for r in rows},
                     key=lambda k: (funnel.SECTION_ORDER.index(k[0]), k[1]))

    def show(title: str, table: tuple) -> None:
        print(f"\n{title}\n\n{report.text_table(*table, max_width=args.width)}")

    print(f"warehouse: {warehouse.database}")
    show("This run next to the published card, by section (final rows)",
         report.published_vs_run_sections(final, published))
    show("By source", report.published_vs_run_sources(sources, final, read, published))
    for section in funnel.SECTION_ORDER:
        show(f"Funnel — {report.SECTION_TITLES[section]} (rows out of each stage; prompts for sampled/verified)",
             report.funnel_table(rows, section))
    zero = report.ended_at_zero(rows)
    if zero:
        show("Sources with no row in the final set", (["section", "source", "read", "where its rows went"], zero))
    stale = funnel.unaccounted(rows)
    if stale:
        print(f"\n⚠ {len(stale)} (source, stage) pairs read rows they neither passed on nor ledgered (a stage older "
              "than its input): " + ", ".join(f"{r.stage}[{r.source}] {r.unaccounted:+,}" for r in stale[:10]))
    settings = runs.stage_settings(warehouse.stage_history()) if warehouse.table_exists("stage_runs") else {}
    lines = stage_lines(CardInputs(name="", build="", by_section=(), files={}, stages=settings))
    print("\nModels and parameters (stage_runs)\n")
    print("\n".join(re.sub(r"[`*]", "", line) for line in lines))
    print(f"\npublished figures: {published.citation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
