"""Jobs: one per recipe section, one for cleaning + export, one for the whole graph.

A Dagster asset job holds one partitions definition, and each section has its own (one partition per
source), so the section jobs are partitioned by source: launching one with a partition reruns that
source through its section; a backfill over all partitions reruns the section. The cleaning job is
unpartitioned. `full_graph` cannot be an asset job (five partitions definitions), so it is a job whose
one op materializes every partition of every asset in graph order, each as its own run in the same
instance (the same loop as `iimed-assets materialize`); its op fails, listing them, when any failed.
"""


import dagster as dg
from pydantic import Field

from iimed_assets.assets.graph import MATERIALIZE_ORDER
from iimed_assets.profiles import Profile
from iimed_assets.resources.defaults import GRAPH_RESOURCE_KEYS
from iimed_assets.runner import materialize_in_order

SECTION_JOBS_SPEC: dict[str, tuple[str, list[str]]] = {
    "section1_public_reasoning": (
        "Section 1: public medical reasoning traces, per source.", ["public_reasoning_rows"]),
    "section2_rejection_sampling": (
        "Section 2: QA seeds → n samples per prompt → verified correct samples (the keep rule), per seed source.",
        ["qa_seed_rows", "qa_samples", "qa_verified"]),
    "section3_r1_domain_filter": (
        "Section 3: public R1 traces → prompt embeddings → K-means → LLM domain vote → medical/biology traces.",
        ["r1_trace_rows", "r1_prompt_embeddings", "r1_clusters", "r1_cluster_domains", "r1_medical_traces"]),
    "section4_instruct": (
        "Section 4: instruction prompts → responses → judged and kept, per source.",
        ["instruct_prompt_rows", "instruct_responses", "instruct_judged"]),
    "eval_sets": ("Evaluation sets for decontamination (never training rows), per eval set.", ["eval_items"]),
}
CLEANING_JOB = "cleaning_and_export"
FULL_GRAPH_JOB = "full_graph"


def section_jobs(profile: Profile) -> list:
    """One job per section and the cleaning job; their descriptions name the profile in force."""
    jobs = []
    note = f" Profile: {profile.name}."
    for name, (description, assets) in SECTION_JOBS_SPEC.items():
        jobs.append(dg.define_asset_job(name, selection=dg.AssetSelection.assets(*assets),
                                        description=description + note,
                                        tags={"iimed/job": name, "iimed/profile": profile.name}))
    jobs.append(dg.define_asset_job(
        CLEANING_JOB, selection=dg.AssetSelection.groups("cleaning"),
        tags={"iimed/job": CLEANING_JOB, "iimed/profile": profile.name},
        description="Merge the sections, dedup, decontaminate, final split, Parquet/JSONL export and card." + note))
    return jobs


SPEND_PLAN_JOB = "spend_plan"


def spend_plan_job(profile: Profile):
    """`llm_spend_plan`: what the model stages would send and cost, before any LLM call (no model is loaded)."""
    return dg.define_asset_job(
        SPEND_PLAN_JOB, selection=dg.AssetSelection.assets("llm_spend_plan"),
        tags={"iimed/job": SPEND_PLAN_JOB, "iimed/profile": profile.name},
        description="Plan the LLM spend before materializing the model stages: requests, tokens, cache hits, USD "
                    f"and hours per stage (no LLM call). Profile: {profile.name}.")


class FullGraphConfig(dg.Config):
    assets: list[str] = Field(default_factory=list, description="only these assets (graph order kept); empty: all")
    partitions: list[str] = Field(default_factory=list, description="only these partition keys; empty: all")
    stop_on_failure: bool = Field(default=False, description="stop at the first failed partition run")


@dg.op(description="Materialize every partition of every asset in graph order, one run per partition, with "
                   "this run's resources.", required_resource_keys=set(GRAPH_RESOURCE_KEYS))
def materialize_full_graph(context: dg.OpExecutionContext, config: FullGraphConfig) -> None:
    known = {a.key.to_user_string() for a in MATERIALIZE_ORDER}
    unknown = sorted(set(config.assets) - known)
    if unknown:
        raise dg.Failure(f"unknown assets {unknown}; known: {sorted(known)}")
    selected = [a for a in MATERIALIZE_ORDER if not config.assets or a.key.to_user_string() in config.assets]
    # The run's own resources, as configured (not set up: each partition run sets them up itself; the model
    # engines load lazily, on a resource's first request).
    resources = {key: context.resources.original_resource_dict[key] for key in GRAPH_RESOURCE_KEYS}
    outcomes = []
    for asset in selected:
        outcomes += materialize_in_order([asset], instance=context.instance, resources=resources,
                                         partitions=config.partitions or None, log=context.log.info,
                                         tags={"iimed/parent_run": context.run_id})
        if config.stop_on_failure and any(o.status == "FAILED" for o in outcomes):
            break
    failed = [o for o in outcomes if o.status == "FAILED"]
    table = "\n".join(["| asset | partition | status | rows | run |", "|---|---|---|---|---|"] + [
        f"| {o.asset} | {o.partition or ''} | {o.status} | {o.rows} | {o.run_id[:8]} |" for o in outcomes])
    context.log.info(f"full graph: {len(outcomes)} partition runs, {len(failed)} failed, "
                     f"{sum(o.status == 'warn' for o in outcomes)} with warnings\n{table}")
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(outcomes)} partition runs failed: "
                        + ", ".join(f"{o.asset}[{o.partition}]" if o.partition else o.asset for o in failed),
            metadata={"runs": dg.MetadataValue.md(table)})


@dg.job(name=FULL_GRAPH_JOB, tags={"iimed/job": FULL_GRAPH_JOB},
        description="The whole graph: every source partition, every stage, cleaning and export, in order.")
def full_graph() -> None:
    materialize_full_graph()
