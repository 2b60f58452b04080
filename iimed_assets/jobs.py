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

from iimed_assets.runner import materialize_in_order

SECTION_JOBS_SPEC: dict[str, tuple[str, list[str]]] = {
    "section1_public_reasoning": (
        "Section 1: public medical reasoning traces, per source.", ["public_reasoning_rows"]),
    "section2_rejection_sampling": (
        "Section 2: QA seeds → n samples per prompt → verified shortest correct sample, per seed source.",
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


def section_jobs(extra: dict[str, list[str]] | None = None) -> list:
    """`extra` adds assets to a section job (later stages register theirs in definitions.py)."""
    jobs = []
    for name, (description, assets) in SECTION_JOBS_SPEC.items():
        selected = [*assets, *(extra or {}).get(name, [])]
        jobs.append(dg.define_asset_job(name, selection=dg.AssetSelection.assets(*selected), description=description,
                                        tags={"iimed/job": name}))
    jobs.append(dg.define_asset_job(
        CLEANING_JOB, selection=dg.AssetSelection.groups("cleaning"), tags={"iimed/job": CLEANING_JOB},
        description="Merge the sections, dedup, decontaminate, final split, Parquet/JSONL export and card."))
    return jobs


class FullGraphConfig(dg.Config):
    assets: list[str] = Field(default_factory=list, description="only these assets (graph order kept); empty: all")
    partitions: list[str] = Field(default_factory=list, description="only these partition keys; empty: all")
    stop_on_failure: bool = Field(default=False, description="stop at the first failed partition run")


@dg.op(description="Materialize every partition of every asset in graph order, one run per partition.")
def materialize_full_graph(context: dg.OpExecutionContext, config: FullGraphConfig) -> None:
    from iimed_assets.definitions import MATERIALIZE_ORDER, default_resources

    known = {a.key.to_user_string() for a in MATERIALIZE_ORDER}
    unknown = sorted(set(config.assets) - known)
    if unknown:
        raise dg.Failure(f"unknown assets {unknown}; known: {sorted(known)}")
    selected = [a for a in MATERIALIZE_ORDER if not config.assets or a.key.to_user_string() in config.assets]
    resources = default_resources()
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
