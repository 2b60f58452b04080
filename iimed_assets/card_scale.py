"""The spend plan at the card's scale: the request shapes measured on the stored rows, times the card's counts.

Counts (the assumptions, also listed in the plan):
  - section 2: every qa_seed source at its registry `expected_rows` (medmcqa 182,822 + medqa 10,178 +
    pubmedqa_unlabeled 61,249 + medreason 32,682 = 286,931 seeds, the card's ~287k), `qa_samples.n` samples each
    (8 in the card profile); the share of seeds that can be verified and the share judged (free-form) are the
    stored rows' shares per source;
  - section 3: K clusters (`Profile.kmeans_k`, 50,000) × `voters` (10) = 500,000 classifications, each as long
    as the mean voter prompt of the stored rows;
  - section 4: every instruct source at the card's `published_rows` (1,025,903 prompts), else `expected_rows`;
    carried responses (am_qwen3_instruction_following) are not generated; every response is judged (~1M
    judgements); a generated response is as long as the generator's expected output in the judge's input;
  - no cache hits (a fresh run);
  - per-request input tokens are each source's mean on the stored rows (its section's mean when a source has
    no stored rows).
"""

from __future__ import annotations

from typing import Any

from iimed_assets.core.spend import RunPlan, StageWork
from iimed_assets.profiles import Profile
from iimed_assets.sources.registry import SOURCES

SECTION_OF_STAGE = {"qa_samples": "qa_seed", "qa_verified": "qa_seed", "instruct_responses": "instruct",
                    "instruct_judged": "instruct"}


def card_rows(spec: Any) -> int | None:
    """The card's count for a source: its published prompt count, else the registry's real size."""
    return spec.published_rows or spec.expected_rows


def scale_to_card(planner: Any, profile: Profile, wanted: list[str]) -> RunPlan:
    stages = []
    assumptions = [line.strip(" -") for line in (__doc__ or "").split("Counts (the assumptions, also listed in the "
                                                                       "plan):")[1].strip().split("\n  - ")]
    for stage in wanted:
        state = planner.states.get(stage)
        if state is None:
            continue
        shapes = state.shapes
        old = state.work
        work = StageWork(stage, old.role, old.backend, old.model, old.token_method, exact=False,
                         notes=list(old.notes))
        if stage == "r1_cluster_domains":
            total_req = sum(s.requests for s in shapes.values())
            if total_req:
                from iimed_assets.assets.r1 import DomainConfig

                voters = planner._config(DomainConfig, stage).voters
                k = profile.kmeans_k or 50_000
                mean = sum(s.input_tokens for s in shapes.values()) / total_req
                any_shape = next(iter(shapes.values()))
                work.add(round(mean), n=any_shape.n, missing=any_shape.n, max_tokens=any_shape.max_tokens,
                         count=k * voters)
                work.notes.append(f"{k:,} clusters × {voters} voters; {mean:,.0f} input tokens per vote (mean of "
                                  f"{total_req:,} stored voter prompts)")
        else:
            section = SECTION_OF_STAGE[stage]
            # a source with stored rows and no request (e.g. MCQ seeds: never judged) contributes none
            measured = {src: s for src, s in shapes.items() if s.rows}
            sec_req = sum(s.requests for s in measured.values())
            sec_rows = sum(s.rows for s in measured.values())
            if not sec_req:
                continue
            sec_mean = sum(s.input_tokens for s in measured.values()) / sec_req
            sample = next(s for s in measured.values() if s.requests)
            for spec in SOURCES:
                if spec.section != section or not card_rows(spec):
                    continue
                rows = card_rows(spec)
                shape = measured.get(spec.name)
                if shape is not None:
                    per_row = shape.requests / shape.rows
                    mean = shape.input_tokens / shape.requests if shape.requests else 0.0
                    n, max_tokens = (shape.n, shape.max_tokens) if shape.requests else (sample.n, sample.max_tokens)
                elif spec.name in planner.carried_sources and stage == "instruct_responses":
                    continue  # carries its responses: nothing generated
                else:
                    per_row, mean, n, max_tokens = sec_req / sec_rows, sec_mean, sample.n, sample.max_tokens
                    work.notes.append(f"{spec.name}: no stored rows, section means used")
                count = round(rows * per_row)
                if count:
                    work.add(round(mean), n=n, missing=n, max_tokens=max_tokens, count=count)
        if work.requests:
            stages.append(planner.finish_work(stage, work))
    return RunPlan(profile.name, "card", stages, assumptions)
