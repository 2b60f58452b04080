"""What every stage records in `stage_runs` when it has swapped its rows in: the settings that decide the rows
(`params`: backend, model, sampling, n, keep rule, thresholds, K, embedding model and precision, prompt-template
hash, profile) and what the run cost (`stats`: rows, tokens, cost, wall time, and runtime knobs such as threads or
device that change the speed, not the rows). One call per asset, at its end; the card and `iimed-assets report`
read them back (`core.runs` groups partitions by settings and names a rerun with other settings).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import dagster as dg

from iimed_assets.core.runs import text_fingerprint
from iimed_assets.provenance import build_id
from iimed_assets.resources.warehouse import Warehouse

# Role settings that change where or how fast a model runs, not what it writes: kept out of the settings hash
# (a rerun on another fleet or thread count is not "other settings"); endpoints are never stored.
RUNTIME_KEYS = frozenset({"threads", "max_concurrency", "tensor_parallel_size", "data_parallel_size",
                          "device", "batch_size", "tokenize_workers"})
NEVER_STORED = frozenset({"base_url", "base_urls", "api_key_env", "api_key", "url"})


def partition_of(context: dg.AssetExecutionContext) -> str | None:
    return context.partition_key if context.has_partition_key else None


def profile_of(context: dg.AssetExecutionContext) -> str | None:
    """The recipe profile the run was launched with (the `iimed/profile` tag), else $IIMED_PROFILE's."""
    tag = (context.run.tags or {}).get("iimed/profile")
    if tag:
        return tag
    try:
        from iimed_assets.profiles import active_profile  # issue 17's profiles; absent before it

        return active_profile().name
    except Exception:  # noqa: BLE001 - no profiles module, or an invalid $IIMED_PROFILE: record none
        return None


def role_settings(role: Any) -> tuple[dict, dict]:
    """(settings, runtime) of a model resource: `describe()` where the resource has one, else its model id."""
    described = dict(role.describe()) if hasattr(role, "describe") else {"model": getattr(role, "model_id", None)}
    if "backend" not in described and hasattr(role, "backend"):
        described["backend"] = getattr(role, "backend")
    settings = {k: v for k, v in described.items() if k not in RUNTIME_KEYS and k not in NEVER_STORED}
    runtime = {k: v for k, v in described.items() if k in RUNTIME_KEYS}
    return settings, runtime


def usage_stats(stats: Any, role: Any) -> dict[str, Any]:
    """Token, request and cost totals of a `UsageStats` (None: nothing was sent)."""
    if stats is None:
        return {}
    cost = role.cost(stats) if hasattr(role, "cost") else 0.0
    return {"requests": stats.requests, "samples": stats.samples, "cache_hits": stats.cache_hits,
            "failures": stats.failures, "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens, "cost_usd": round(cost, 6),
            "llm_wall_s": round(stats.wall_s, 2)}


def prompt_templates(asset: str) -> dict[str, Any]:
    """The prompt templates a stage renders, rendered with placeholders (a change anywhere in the rendering shows
    as another `template_hash`); {} for a stage without one."""
    from iimed_assets.core import domains, judge, qa

    placeholders = ("{question}", "{reference}", "{answer}")
    if asset == "qa_samples":
        return {"generation": [qa.TEMPLATE_VERSION, qa.TEMPLATES]}
    if asset == "qa_verified":
        return {"verification": [qa.verification_messages(*placeholders, structured=s) for s in (False, True)]}
    if asset == "instruct_judged":
        return {"judge": [judge.judge_messages(*placeholders, structured=s) for s in (False, True)]}
    if asset == "r1_cluster_domains":
        task = domains.DOMAIN_TASK
        return {"domain": [task.labels, task.exemplars, *(task.render("{prompt}", s) for s in (False, True))]}
    return {}


def step_seconds(context: dg.AssetExecutionContext) -> float | None:
    """Seconds since this step started (its STEP_START event in the instance)."""
    try:
        records = context.instance.get_records_for_run(context.run.run_id,
                                                       of_type=dg.DagsterEventType.STEP_START).records
        name = context.op_execution_context.op.name
        starts = [r.event_log_entry.timestamp for r in records if r.event_log_entry.step_key == name]
    except Exception:  # noqa: BLE001 - an instance without the event: no wall time, never a failed stage
        return None
    return round(time.time() - max(starts), 2) if starts else None


def record_stage_run(context: dg.AssetExecutionContext, warehouse: Warehouse, *, settings: Mapping[str, Any],
                     started: float | None = None, roles: Mapping[str, Any] | None = None,
                     usage: Mapping[str, Any] | None = None, templates: Mapping[str, Any] | None = None,
                     stats: Mapping[str, Any] | None = None, runtime: Mapping[str, Any] | None = None) -> str:
    """Record this asset's run of its partition. `settings`: the stage config values that decide its rows;
    `roles`: role name -> model resource (`generator`, `judge`, ...); `usage`: role name -> UsageStats;
    `templates`: name -> rendered template text (hashed, so a template edit shows as other settings; default: the
    stage's own, `prompt_templates`); `started`: a perf_counter reading (default: the step's start event).
    Returns the settings hash."""
    params: dict[str, Any] = {}
    profile = profile_of(context)
    if profile:
        params["profile"] = profile
    run_stats: dict[str, Any] = dict(stats or {})
    run_runtime: dict[str, Any] = dict(runtime or {})
    for name, role in (roles or {}).items():
        params[name], role_runtime = role_settings(role)
        if role_runtime:
            run_runtime[name] = role_runtime
        if usage and usage.get(name) is not None:
            run_stats[name] = usage_stats(usage[name], role)
            for key in ("prompt_tokens", "completion_tokens", "requests", "cache_hits", "cost_usd"):
                run_stats[key] = run_stats.get(key, 0) + run_stats[name][key]
    params.update({k: v for k, v in settings.items() if k not in NEVER_STORED})
    templates = templates if templates is not None else prompt_templates(context.asset_key.to_user_string())
    if templates:
        params["template_hash"] = text_fingerprint(*[templates[k] for k in sorted(templates)])
    wall = round(time.perf_counter() - started, 2) if started is not None else step_seconds(context)
    if wall is not None and "wall_s" not in run_stats:
        run_stats["wall_s"] = wall
    if run_runtime:
        run_stats["runtime"] = run_runtime
    run_stats["build"] = build_id()  # which code produced the rows (the card lists the builds of the current rows)
    return warehouse.record_stage(context.asset_key.to_user_string(), context.run.run_id, params, run_stats,
                                  partition=partition_of(context))


def read_from(origin: str) -> str:
    """The kind of a catalog origin string: sample | hub | hub-mirror | local."""
    return origin.split(":", 1)[0] if ":" in origin else origin


def record_source_read(context: dg.AssetExecutionContext, warehouse: Warehouse, origin: str, *, max_rows: int | None,
                       rows_read: int, rows: int, ledgered: int, seconds: float) -> str:
    """A source partition's record: where it was read from (the card marks sample stand-ins) and its counts."""
    return record_stage_run(context, warehouse, settings={"read_from": read_from(origin), "max_rows": max_rows},
                            stats={"origin": origin, "rows_read": rows_read, "rows": rows, "ledgered": ledgered,
                                   "wall_s": round(seconds, 2)})
