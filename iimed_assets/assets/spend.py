"""The spend plan in the UI: `llm_spend_plan`, one row per model stage, materialized before the model stages.

Why an asset (and not an op in a job): the plan is a table a user looks at before launching the expensive runs
and compares with the runs' actual usage afterwards. As an asset it sits in the catalog beside the stages it
plans, keeps a history of materializations (each plan's figures, next to each stage's `generator/…`/`judge/…`
usage metadata), and carries a check, `plan_within_budget`, that turns red when the planned spend crosses the
configured caps — before anything was paid. It calls no model: it renders the requests, counts tokens and reads
the cache (core.spend, planning.py). It has no upstream deps on purpose: it reads whatever the warehouse holds
now, so it is not pulled into the section jobs.
"""

import math

import dagster as dg
import pyarrow as pa
from pydantic import Field

from iimed_assets.assets.common import markdown_table
from iimed_assets.planning import plan_run
from iimed_assets.profiles import active_profile
from iimed_assets.resources.llm import RoleResource
from iimed_assets.resources.warehouse import Warehouse

PROFILE = active_profile()
PLAN_WITHIN_BUDGET = "plan_within_budget"
PLAN_COLUMNS = [
    ("stage", pa.string()), ("role", pa.string()), ("model", pa.string()), ("requests", pa.int64()),
    ("samples", pa.int64()), ("cache_hits", pa.int64()), ("paid_requests", pa.int64()), ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()), ("output_tokens_max", pa.int64()), ("usd", pa.float64()), ("usd_max", pa.float64()),
    ("hours", pa.float64()), ("exact", pa.bool_()), ("token_method", pa.string()), ("output_basis", pa.string()),
    ("price_basis", pa.string()), ("throughput_basis", pa.string()),
]


class SpendPlanConfig(dg.Config):
    scale: str = Field(default="warehouse", description="warehouse: the rows stored now; card: the card's counts")
    output_tokens: dict[str, float] = Field(default_factory=dict,
                                            description="stated completion tokens per sample, by stage or role")


@dg.asset(
    group_name="plan",
    kinds={"duckdb", "llm"},
    check_specs=[dg.AssetCheckSpec(PLAN_WITHIN_BUDGET, asset="llm_spend_plan",
                                   description="The planned spend of every stage and of the run stays within the "
                                               "roles' max_usd caps.")],
)
def llm_spend_plan(context: dg.AssetExecutionContext, config: SpendPlanConfig, warehouse: Warehouse,
                   generator: RoleResource, classifier: RoleResource, judge: RoleResource) -> dg.MaterializeResult:
    """What each model stage would send and cost before any LLM call: requests, tokens, cache hits, USD, hours."""
    roles = {"generator": generator, "classifier": classifier, "judge": judge}
    plan = plan_run(warehouse, roles, PROFILE, scale=config.scale, output_tokens=config.output_tokens)
    rows = [{name: getattr(p, name) for name, _ in PLAN_COLUMNS} for p in plan.stages]
    table = pa.Table.from_pylist(rows, schema=pa.schema(PLAN_COLUMNS))
    with warehouse.connect() as con:
        con.register("_plan", table)
        con.execute("CREATE OR REPLACE TABLE llm_spend_plan AS SELECT * FROM _plan")
        con.unregister("_plan")
    totals = plan.totals()
    context.log.info(plan.key_values())
    over = []
    for p in plan.stages:
        cap = getattr(roles[p.role], "max_usd_stage", None)
        if cap is not None and p.usd > cap:
            over.append(f"{p.stage}: ${p.usd:,.2f} > stage cap ${cap:,.2f}")
    run_caps = [c for c in (getattr(r, "max_usd_run", None) for r in roles.values()) if c is not None]
    run_cap = min(run_caps) if run_caps else math.inf
    if totals["usd"] > run_cap:
        over.append(f"run: ${totals['usd']:,.2f} > run cap ${run_cap:,.2f}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "profile": PROFILE.name,
            "scale": plan.scale,
            "plan": dg.MetadataValue.md(plan.markdown()),
            "how_counted": dg.MetadataValue.md("\n".join(f"- {line}" for line in plan.basis_lines())),
            "assumptions": dg.MetadataValue.md("\n".join(f"- {line}" for line in plan.assumptions)),
            "requests": int(totals["requests"]),
            "samples": int(totals["samples"]),
            "cache_hits": int(totals["cache_hits"]),
            "input_tokens": int(totals["input_tokens"]),
            "output_tokens": int(totals["output_tokens"]),
            "usd": round(totals["usd"], 2),
            "usd_max": round(totals["usd_max"], 2),
            "hours": round(totals["hours"], 2),
            "summary": plan.key_values(),
        },
        check_results=[dg.AssetCheckResult(
            check_name=PLAN_WITHIN_BUDGET, passed=not over, severity=dg.AssetCheckSeverity.WARN,
            metadata={"planned_usd": round(totals["usd"], 2), "run_cap_usd": run_cap if run_caps else "none",
                      "over": dg.MetadataValue.md(markdown_table(["over the cap"], [(o,) for o in over]) if over
                                                  else "none")})],
    )


SPEND_ASSETS = [llm_spend_plan]
