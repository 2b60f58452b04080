"""The spend plan of a run, before any LLM call: per model stage, the requests the assets would send (rendered by
the same request builders), their input tokens, the expected output, cache hits, cost and wall time.

    plan = plan_run(warehouse, roles, scale="warehouse")       # what the next materialization would send
    plan = plan_run(warehouse, roles, scale="card")            # the card's counts (registry + recipe)
    print(plan.table()); print(plan.key_values())

`scale="warehouse"` renders every request from the rows stored now: a stage whose inputs exist (qa_seed_rows,
instruct_prompt_rows, r1_clusters) is exact; a judge stage whose inputs are still to be generated (qa_samples,
instruct_responses not materialized) is estimated from the planned generations (said per stage). The cache is
read, never written: a sample in `llm_cache` is a hit that is not paid again.

`scale="card"` keeps the per-source request shapes measured on the stored rows (mean input tokens per request,
share of seeds that are sampled, share judged) and multiplies them by the card's counts: the registry's
`expected_rows` (or `published_rows`), K = 50,000 clusters × 10 voters, and no cache. Its assumptions are listed
in `RunPlan.assumptions`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from iimed_assets import settings
from iimed_assets.core.llm import ChatRequest, cache_key
from iimed_assets.core.spend import CharsPerToken, ExpectedOutput, Prices, RunPlan, StagePlan, StageWork, Throughput
from iimed_assets.profiles import Profile

LLM_STAGES = ("qa_samples", "qa_verified", "r1_cluster_domains", "instruct_responses", "instruct_judged")
STAGE_ROLE = {"qa_samples": "generator", "qa_verified": "judge", "r1_cluster_domains": "classifier",
              "instruct_responses": "generator", "instruct_judged": "judge"}
# Stated throughputs (completion tokens/s of the whole role) when nothing was measured; IIMED_<ROLE>_TOKENS_PER_S
# overrides. llama.cpp: SmolLM2-135M on one core of this 2-core machine (bench/spend_plan.py measures it);
# an OpenAI-compatible server: a vLLM node serving a large model to many concurrent sequences (per server).
STATED_TOKENS_PER_S = {"llamacpp": 40.0, "openai": 3000.0, "vllm": 3000.0}
BATCH_WINDOW_HOURS = 24.0
MIN_MEASURED_SAMPLES = 20
# The share of a reasoning model's response that is its final answer (after </think>), for a judge that grades the
# answer only (instruct_judged `judge_sees: answer`) planned before the responses exist. Measured on open medical
# questions answered after reasoning: HuatuoGPT-o1's demo data (198 rows; `Response` over `Complex_CoT` +
# `Response`, in characters) gives 0.24 (mean answer 716 characters).
ANSWER_SHARE_ASSUMED = 0.24
_LOOKUP_CHUNK = 20_000


@dataclass
class _Shape:
    """Per stage and source: what one request looks like, for scaling to other counts."""

    rows: int = 0            # input rows (seeds, prompts, clusters)
    requests: int = 0
    input_tokens: int = 0
    n: int = 1
    max_tokens: int = 0

    def add(self, tokens: int, n: int, max_tokens: int) -> None:
        self.requests += 1
        self.input_tokens += tokens
        self.n, self.max_tokens = n, max_tokens


@dataclass
class _StageState:
    work: StageWork
    cached_tokens: list[int] = field(default_factory=list)
    shapes: dict[str, _Shape] = field(default_factory=lambda: defaultdict(_Shape))
    planned_keys: set[str] = field(default_factory=set)  # samples planned already: an identical one is sent once


def _cached(warehouse: Any, keys: list[str]) -> dict[str, int]:
    """{key: completion tokens} of the keys found in llm_cache (read only)."""
    if not keys or not warehouse.table_exists("llm_cache"):
        return {}
    found: dict[str, int] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        # an empty or failed sample is kept too, but asked (and paid) again: not a hit (issue 21)
        for key, ct in warehouse.fetch("SELECT key, completion_tokens FROM llm_cache WHERE key IN "
                                       "(SELECT unnest(?::VARCHAR[])) AND finish_reason NOT IN ('empty', 'error')",
                                       [keys[start:start + _LOOKUP_CHUNK]]):
            found[key] = int(ct or 0)
    return found


def _model_mean(warehouse: Any, model: str) -> tuple[float, int] | None:
    if not warehouse.table_exists("llm_cache"):
        return None
    row = warehouse.fetch_one("SELECT avg(completion_tokens), count(*) FROM llm_cache WHERE model = ? "
                              "AND finish_reason NOT IN ('empty', 'error')", [model])
    return (float(row[0]), int(row[1])) if row and row[1] else None


def profile_settings(profile: Profile | None, stage: str) -> dict[str, Any]:
    """The stage config values a profile sets (the same mapping as the asset configs' defaults)."""
    if profile is None:
        return {}
    p = profile
    return {
        "qa_samples": {"n": p.qa_n, "temperature": p.qa_temperature, "top_p": p.qa_top_p, "max_tokens": p.qa_max_tokens},
        "qa_verified": {"judge_max_tokens": p.verify_max_tokens, "judge_rationale_chars": p.verify_rationale_chars},
        "r1_clusters": {"k": p.kmeans_k},
        "r1_cluster_domains": {"voters": p.domain_voters, "max_tokens": p.domain_max_tokens,
                               "per_prompt_budget": p.per_prompt_budget},
        "instruct_responses": {"max_tokens": p.instruct_max_tokens},
        "instruct_judged": {"max_tokens": p.judge_max_tokens, "rationale_chars": p.judge_rationale_chars},
    }.get(stage, {})


def _is_llm(role: Any) -> bool:
    return hasattr(role, "generate")


class Planner:
    """Collects the planned requests of each stage (see module docstring)."""

    def __init__(self, warehouse: Any, roles: Mapping[str, Any], settings: Mapping[str, Mapping[str, Any]] | None = None,
                 output_tokens: Mapping[str, float] | None = None, env: Mapping[str, str] | None = None,
                 measured_throughput: Callable[[str, str], tuple[float, str] | None] | None = None,
                 fresh: bool = False, profile: Profile | None = None):
        self.warehouse = warehouse
        self.profile = profile
        self.fresh = fresh  # a fresh run: no cache hits, upstream model outputs not read (the card's scale)
        self.carried_sources: list[str] = []
        self.roles = roles
        self.settings = settings or {}
        self.output_tokens = dict(output_tokens or {})
        self.env = os.environ if env is None else env
        self.measured_throughput = measured_throughput
        self.counters = {name: (role.token_counter() if hasattr(role, "token_counter") else CharsPerToken())
                         for name, role in roles.items()}
        self.states: dict[str, _StageState] = {}
        self.expected_generation: dict[str, float] = {}

    def _config(self, cls: Any, stage: str) -> Any:
        """The stage's config as the plan's profile sets it (not the defaults bound when the module loaded), with
        the `--set` values on top."""
        return cls(**{**profile_settings(self.profile, stage), **dict(self.settings.get(stage, {}))})

    def _state(self, stage: str, exact: bool = True) -> _StageState:
        if stage not in self.states:
            role_name = STAGE_ROLE[stage]
            role = self.roles[role_name]
            self.states[stage] = _StageState(StageWork(stage, role_name, role.backend, getattr(role, "model_id", "?"),
                                                       self.counters[role_name].name, exact))
        return self.states[stage]

    def add_requests(self, stage: str, source: str, requests: Iterable[ChatRequest], *, exact: bool = True,
                     extra_input: int = 0) -> None:
        """Plan these requests of a stage (cache looked up, tokens counted)."""
        role = self.roles[STAGE_ROLE[stage]]
        counter = self.counters[STAGE_ROLE[stage]]
        state = self._state(stage, exact)
        state.work.exact = state.work.exact and exact
        requests = list(requests)
        model = role.model_id
        keys = [[cache_key(model, r, i) for i in range(r.n)] for r in requests]
        hits = _cached(self.warehouse, [k for ks in keys for k in ks]) if exact and not self.fresh else {}
        budget = role.budget if hasattr(role, "budget") else (lambda m: m)
        for req, ks in zip(requests, keys):
            tokens = counter.count(req.messages) + extra_input
            # the assets send one request per distinct cache key (two samples with the same answer share one
            # verification): a sample planned already in this stage is not paid again, like a cache hit. Only for
            # requests rendered from real inputs: an estimated one's placeholder text is not what will be sent.
            missing = sum(1 for k in ks if k not in hits and not (exact and k in state.planned_keys))
            if exact:
                state.planned_keys.update(ks)
            state.cached_tokens.extend(hits[k] for k in ks if k in hits)
            state.work.add(tokens, n=req.n, missing=missing, max_tokens=budget(req.max_tokens))
            state.shapes[source].add(tokens, req.n, budget(req.max_tokens))

    def expected(self, stage: str) -> ExpectedOutput:
        state = self.states[stage]
        role = self.roles[STAGE_ROLE[stage]]
        if stage in self.output_tokens:
            return ExpectedOutput(self.output_tokens[stage], f"stated: {self.output_tokens[stage]:g} tokens/sample")
        if STAGE_ROLE[stage] in self.output_tokens:
            value = self.output_tokens[STAGE_ROLE[stage]]
            return ExpectedOutput(value, f"stated: {value:g} tokens/sample for the {STAGE_ROLE[stage]}")
        if len(state.cached_tokens) >= MIN_MEASURED_SAMPLES:
            mean = sum(state.cached_tokens) / len(state.cached_tokens)
            return ExpectedOutput(mean, f"measured: cache mean {mean:,.1f} tokens over {len(state.cached_tokens):,} "
                                        "samples of this stage")
        measured = _model_mean(self.warehouse, role.model_id)
        if measured and measured[1] >= MIN_MEASURED_SAMPLES:
            return ExpectedOutput(measured[0], f"measured: cache mean {measured[0]:,.1f} tokens over {measured[1]:,} "
                                               f"samples of {role.model_id} (all stages; capped at the budget)")
        return ExpectedOutput(float("inf"), "the configured budget (max_tokens: a ceiling; nothing measured yet)")

    def throughput(self, stage: str) -> Throughput:
        role_name = STAGE_ROLE[stage]
        role = self.roles[role_name]
        if role.backend == "openai_batch":
            return Throughput(0.0, f"Batch API: up to the {BATCH_WINDOW_HOURS:g} h completion window per round "
                                   "(the ceiling)", fixed_hours=BATCH_WINDOW_HOURS)
        stated = settings.value(f"IIMED_{role_name.upper()}_TOKENS_PER_S", self.env)
        if stated:
            return Throughput(float(stated), f"stated: IIMED_{role_name.upper()}_TOKENS_PER_S={stated} output tokens/s")
        if self.measured_throughput:
            measured = self.measured_throughput(stage, role_name)
            if measured:
                return Throughput(measured[0], measured[1])
        per = STATED_TOKENS_PER_S.get(role.backend, 0.0)
        servers = len(role.server_urls()) if hasattr(role, "server_urls") else 1
        return Throughput(per * servers, f"stated: {per:g} output tokens/s per server × {servers} "
                                         f"({role.backend}; IIMED_{role_name.upper()}_TOKENS_PER_S overrides)")

    def finish(self, stage: str) -> StagePlan:
        return self.finish_work(stage, self.states[stage].work)

    def finish_work(self, stage: str, work: StageWork) -> StagePlan:
        role = self.roles[STAGE_ROLE[stage]]
        prices = role.prices() if hasattr(role, "prices") else Prices()
        return work.finish(prices, self.expected(stage), self.throughput(stage))


# ---- reading the stored rows -----------------------------------------------------------------------------

def _seed_rows(warehouse: Any) -> Iterable[dict]:
    from iimed_assets.assets.qa import SEED_COLUMNS

    for source, in warehouse.fetch("SELECT DISTINCT source FROM qa_seed_rows ORDER BY 1"):
        for batch in warehouse.iter_partition("qa_seed_rows", source, ["source", *SEED_COLUMNS], 2048):
            yield from batch


def plan_qa(planner: Planner) -> None:
    """qa_samples (the generator) and qa_verified (the judge's free-form verification)."""
    from iimed_assets.assets import qa as qa_assets
    from iimed_assets.core import qa

    wh = planner.warehouse
    if not wh.table_exists("qa_seed_rows"):
        return
    cfg = planner._config(qa_assets.QASamplesConfig, "qa_samples")
    vcfg = planner._config(qa_assets.QAVerifiedConfig, "qa_verified")
    judge = planner.roles["judge"]
    structured = judge.uses_structured_outputs() if hasattr(judge, "uses_structured_outputs") else False
    by_source: dict[str, list] = defaultdict(list)
    seeds: dict[str, int] = defaultdict(int)
    for row in _seed_rows(wh):
        seeds[row["source"]] += 1
        plan = qa_assets.plan_row(row)
        if not isinstance(plan, str):
            by_source[row["source"]].append((row, plan))
    for source, planned in sorted(by_source.items()):
        planner.add_requests("qa_samples", source, [qa_assets.sample_request(p, cfg) for _, p in planned])
        planner.states["qa_samples"].shapes[source].rows = seeds[source]
    sampled = wh.table_exists("qa_samples") and not planner.fresh
    for source, planned in sorted(by_source.items()):
        if sampled:
            rows = {row["id"]: row for row, _ in planned}
            samples = wh.fetch("SELECT prompt_id, sample_index, verify_method, reference, response, finish_reason "
                               "FROM qa_samples WHERE source = ? AND verify_method = 'judge' ORDER BY prompt_id, "
                               "sample_index", [source])
            grouped: dict[str, list[dict]] = defaultdict(list)
            for pid, si, method, ref, resp, finish in samples:
                grouped[pid].append({"sample_index": si, "verify_method": method, "reference": ref, "response": resp,
                                     "finish_reason": finish})
            requests = []
            for pid, group in grouped.items():
                if pid not in rows:
                    continue
                checked = qa.check_samples(group, None)
                requests += [qa_assets.verification_request(rows[pid]["prompt"], s["reference"],
                                                            checked[s["sample_index"]].extracted, structured, vcfg)
                             for s in group if checked[s["sample_index"]].verdict == qa.Verdict.TO_JUDGE]
            planner.add_requests("qa_verified", source, requests)
        else:
            # before sampling: every free-form sample is judged (the format gate may spare some), and its answer
            # is taken to be as long as the reference
            free = [(row, p) for row, p in planned if p.verify_method == "judge"]
            requests = [qa_assets.verification_request(row["prompt"], p.reference, p.reference, structured, vcfg)
                        for row, p in free for _ in range(cfg.n)]
            planner.add_requests("qa_verified", source, requests, exact=False)
        if "qa_verified" in planner.states:
            planner.states["qa_verified"].shapes[source].rows = seeds[source]
    if "qa_verified" in planner.states and not sampled:
        planner.states["qa_verified"].work.notes.append(
            "qa_samples not materialized: every free-form sample assumed judged, its answer as long as the reference")


def plan_domains(planner: Planner) -> None:
    """r1_cluster_domains (the classifier's vote over the prompts nearest each centroid)."""
    from iimed_assets.assets.r1 import ClusterConfig, DomainConfig
    from iimed_assets.core import clustering, domains

    role = planner.roles["classifier"]
    wh = planner.warehouse
    cfg = planner._config(DomainConfig, "r1_cluster_domains")
    if not _is_llm(role):
        state = planner._state("r1_cluster_domains")
        state.work.notes.append(f"{role.backend} classifier: no LLM calls")
        return
    structured = role.uses_structured_outputs()
    if wh.table_exists("r1_clusters"):
        voters = wh.fetch(
            "SELECT c.source, t.prompt FROM (SELECT cluster_id, source, id, row_number() OVER (PARTITION BY cluster_id "
            "ORDER BY distance, source, id) AS rank FROM r1_clusters) c JOIN r1_trace_rows t ON t.id = c.id AND "
            "t.source = c.source WHERE c.rank <= ? ORDER BY c.cluster_id, c.rank", [cfg.voters])
        exact = True
    elif wh.table_exists("r1_trace_rows"):
        # before clustering: K clusters × voters, prompts drawn from the stored traces
        rows = wh.fetch_one("SELECT count(*) FROM r1_trace_rows")[0]
        kcfg = planner._config(ClusterConfig, "r1_clusters")
        k = clustering.choose_k(rows, kcfg.k, kcfg.prompts_per_cluster)  # the rule r1_clusters applies
        voters = wh.fetch("SELECT source, prompt FROM r1_trace_rows USING SAMPLE reservoir(? ROWS) REPEATABLE (0)",
                          [min(rows, k * cfg.voters)])
        exact = False
    else:
        return
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, prompt in voters:
        by_source[source].append(prompt)
    for source, prompts in sorted(by_source.items()):
        planner.add_requests("r1_cluster_domains", source,
                             role.label_requests(prompts, domains.DOMAIN_TASK, structured, max_tokens=cfg.max_tokens,
                                                 temperature=cfg.temperature, seed=cfg.seed), exact=exact)
    state = planner.states.get("r1_cluster_domains")
    if state and cfg.per_prompt_budget > 0:
        state.work.notes.append(f"mixed clusters may add up to {cfg.per_prompt_budget:g} × voters more "
                                "classifications (unknown before the vote; not counted)")


def plan_instruct(planner: Planner) -> None:
    """instruct_responses (the generator) and instruct_judged (the judge's 1-10 score)."""
    from iimed_assets.assets import instruct as ins

    wh = planner.warehouse
    if not wh.table_exists("instruct_prompt_rows"):
        return
    cfg = planner._config(ins.InstructResponsesConfig, "instruct_responses")
    jcfg = planner._config(ins.InstructJudgedConfig, "instruct_judged")
    judge = planner.roles["judge"]
    structured = judge.uses_structured_outputs() if hasattr(judge, "uses_structured_outputs") else False
    sources = [s for s, in wh.fetch("SELECT DISTINCT source FROM instruct_prompt_rows ORDER BY 1")]
    responded = wh.table_exists("instruct_responses") and not planner.fresh
    planner.carried_sources = list(cfg.carried_response_sources)
    pending_judge: list[tuple[str, dict, bool]] = []
    for source in sources:
        carried = source in cfg.carried_response_sources
        rows = [r for batch in wh.iter_partition("instruct_prompt_rows", source,
                                                 ["id", "prompt", "gold_answer", "messages"], 2048) for r in batch]
        generate = [r for r in rows if not (carried and ins.carries_response(r["messages"]))]
        if generate:
            planner.add_requests("instruct_responses", source, [ins.response_request(r["messages"], cfg)
                                                                 for r in generate])
            planner.states["instruct_responses"].shapes[source].rows = len(rows)
        if responded:
            judged = [r for batch in wh.iter_partition("instruct_responses", source,
                                                       ["id", "prompt", "gold_answer", "messages"], 2048) for r in batch]
            planner.add_requests("instruct_judged", source, [
                ins.judge_request(r["prompt"], r["gold_answer"], r["messages"][-1]["content"], structured, jcfg)
                for r in judged])
            if judged:
                planner.states["instruct_judged"].shapes[source].rows = len(rows)
        else:
            pending_judge += [(source, r, carried and ins.carries_response(r["messages"])) for r in rows]
    if not responded and pending_judge:
        # before generation: a generated response is as long as the generator's expected output
        per_response = 0.0
        if "instruct_responses" in planner.states:
            exp = planner.expected("instruct_responses").tokens
            state = planner.states["instruct_responses"].work
            ceiling = state.output_ceiling / state.missing_samples if state.missing_samples else 0.0
            per_response = min(exp, ceiling) if state.missing_samples else 0.0
        judged_share = ANSWER_SHARE_ASSUMED if jcfg.judge_sees == "answer" else 1.0
        by_source: dict[str, list] = defaultdict(list)
        for source, r, carried in pending_judge:
            by_source[source].append((r, carried))
        for source, items in sorted(by_source.items()):
            for r, carried in items:
                answer = r["messages"][-1]["content"] if carried else ""
                planner.add_requests("instruct_judged", source,
                                     [ins.judge_request(r["prompt"], r["gold_answer"], answer, structured, jcfg)],
                                     exact=False, extra_input=0 if carried else round(per_response * judged_share))
            planner.states["instruct_judged"].shapes[source].rows = len(items)
        seen = (f"of which the judge reads the final answer, {ANSWER_SHARE_ASSUMED:.0%} (judge_sees: answer; the "
                "share measured on HuatuoGPT-o1's reasoning + answers)" if jcfg.judge_sees == "answer"
                else "all read by the judge (judge_sees: full)")
        planner.states["instruct_judged"].work.notes.append(
            f"instruct_responses not materialized: each generated response assumed {per_response:,.0f} tokens "
            f"(the generator's expected output), {seen}")


def plan_run(warehouse: Any, roles: Mapping[str, Any], profile: Profile, *, scale: str = "warehouse",
             assets: Iterable[str] | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None,
             output_tokens: Mapping[str, float] | None = None, env: Mapping[str, str] | None = None,
             measured_throughput: Callable[[str, str], tuple[float, str] | None] | None = None) -> RunPlan:
    """The plan of every LLM stage (or of `assets`), at the stored rows' scale or the card's."""
    planner = Planner(warehouse, roles, settings, output_tokens, env, measured_throughput, fresh=scale == "card",
                      profile=profile)
    plan_qa(planner)
    plan_domains(planner)
    plan_instruct(planner)
    wanted = [s for s in LLM_STAGES if not assets or s in set(assets)]
    if scale == "card":
        from iimed_assets.card_scale import scale_to_card

        return scale_to_card(planner, profile, wanted)
    if scale != "warehouse":
        raise ValueError(f"scale {scale!r}: expected warehouse or card")
    stages = [planner.finish(s) for s in wanted if s in planner.states]
    assumptions = [f"counted from the rows stored in {getattr(warehouse, 'path', None) or 'the warehouse'} now"]
    missing = [s for s in wanted if s not in planner.states]
    if missing:
        assumptions.append(f"not planned (their input tables are empty): {', '.join(missing)}")
    return RunPlan(profile.name, "warehouse", stages, assumptions)
