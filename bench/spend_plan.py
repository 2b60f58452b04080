"""The spend plan against what a run counts, on the bundled sample; then the card-scale plan.

1. A fresh warehouse gets the bundled sample's section-2 and section-4 inputs (qa_seed_rows, instruct_prompt_rows).
2. `plan_run` plans every model stage *before any call*, with the roles pointed at loopback OpenAI-compatible
   servers: the plan counts input tokens with the stated chars-per-token estimate (as for any HTTP model), the
   servers count them with a real tokenizer (SmolLM2's GGUF vocabulary and chat template) — the baseline.
3. The four model stages run against the servers; the requests and prompt tokens each stage's materialization
   reports (as the servers counted them) are set beside the plan's figures.
4. The same plan at the card's counts (registry + recipe), with the card profile's prices and stated outputs.

Last line: key=value (per stage: planned/counted requests and input tokens, relative errors; the card plan).
    python bench/spend_plan.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge-output", type=float, default=200.0, help="stated judge output tokens (card plan)")
    ap.add_argument("--generator-output", type=float, default=4000.0,
                    help="stated generator output tokens per sample (card plan)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spend-bench-"))
    os.environ["IIMED_WAREHOUSE"] = str(tmp / "w.duckdb")
    import dagster as dg

    from iimed_assets.assets.instruct import instruct_judged, instruct_responses
    from iimed_assets.assets.qa import qa_samples, qa_verified
    from iimed_assets.assets.sources import instruct_prompt_rows, qa_seed_rows
    from iimed_assets.partitions import instruct_partitions, qa_seed_partitions
    from iimed_assets.planning import plan_run
    from iimed_assets.profiles import CARD, LAPTOP
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.resources.llm import EmbeddingClassifier, OpenAICompatibleLLM, role_resource
    from iimed_assets.resources.llm.llamacpp import default_gguf_path
    from iimed_assets.resources.llm.tokens import gguf_counter
    from iimed_assets.resources.warehouse import Warehouse
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI, Reply

    wh = Warehouse(path=str(tmp / "w.duckdb"))
    catalog = SourceCatalog(mode="sample")
    (tmp / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
        for asset, parts in ((qa_seed_rows, qa_seed_partitions), (instruct_prompt_rows, instruct_partitions)):
            for key in parts.get_partition_keys():
                dg.materialize([asset], partition_key=key, instance=instance,
                               resources={"warehouse": wh, "catalog": catalog})
        tokenizer = gguf_counter(default_gguf_path())

        def judge_script(call):
            schema = call.response_schema or {}
            if "verdict" in schema.get("properties", {}):
                return Reply.json({"rationale": "same meaning as the reference", "verdict": "CORRECT"})
            return Reply.json({"rationale": "acceptable against the reference", "score": 9})

        def gen_script(call):  # distinct samples, as a sampling model writes them (identical ones are sent once)
            return Reply(contents=[f"<think>step by step</think> The answer is \\boxed{{{'ABCD'[i % 4]}}}."
                                   for i in range(int(call.body["n"]))])

        with LoopbackOpenAI(count_prompt_tokens=tokenizer.count, completion_tokens_per_choice=60,
                            script=gen_script) as gen, \
                LoopbackOpenAI(count_prompt_tokens=tokenizer.count, completion_tokens_per_choice=20,
                               script=judge_script) as judge:
            roles = {"generator": OpenAICompatibleLLM(base_url=gen.url, model="gen"),
                     "classifier": EmbeddingClassifier(),
                     "judge": OpenAICompatibleLLM(base_url=judge.url, model="judge", usd_per_1m_prompt_tokens=2.5,
                                                  usd_per_1m_completion_tokens=10.0)}
            class Tokenized(OpenAICompatibleLLM):
                def token_counter(self):  # the served model's own tokenizer, offline (as llama.cpp roles have)
                    return tokenizer

            tokenized = {"generator": Tokenized(base_url=gen.url, model="gen"), "classifier": roles["classifier"],
                         "judge": Tokenized(base_url=judge.url, model="judge", usd_per_1m_prompt_tokens=2.5,
                                            usd_per_1m_completion_tokens=10.0)}
            started = time.perf_counter()
            plan = {p.stage: p for p in plan_run(wh, roles, LAPTOP).stages}
            plan_s = time.perf_counter() - started
            plan_tok = {p.stage: p for p in plan_run(wh, tokenized, LAPTOP).stages}
            counted: dict[str, list[int]] = {}
            plan_late: dict = {}
            for asset, parts, role in ((qa_samples, qa_seed_partitions, "generator"),
                                       (qa_verified, qa_seed_partitions, "judge"),
                                       (instruct_responses, instruct_partitions, "generator"),
                                       (instruct_judged, instruct_partitions, "judge")):
                name = asset.key.to_user_string()
                if role == "judge":  # the judge stages planned again once their inputs are generated
                    plan_late[name] = {p.stage: p for p in plan_run(wh, tokenized, LAPTOP).stages}[name]
                total = [0, 0, 0]
                for key in parts.get_partition_keys():
                    res = dg.materialize([asset], partition_key=key, instance=instance,
                                         resources={"warehouse": wh, role: roles[role]})
                    md = res.get_asset_materialization_events()[0].materialization.metadata
                    total[0] += md[f"{role}/requests"].value
                    total[1] += md[f"{role}/prompt_tokens"].value
                    total[2] += md[f"{role}/completion_tokens"].value
                counted[name] = total
    out = [f"plan_s={plan_s:.2f}"]
    for title, tag, plans in (("before any call, input tokens at the stated 4 chars/token", "est", plan),
                              ("before any call, input tokens with the model's tokenizer", "tok", plan_tok),
                              ("judge stages planned after their inputs were generated (tokenizer)", "late", plan_late)):
        print(f"\n{title}:")
        print(f"{'stage':20} {'req plan':>9} {'req run':>8} {'in plan':>9} {'in run':>9} {'in err':>7} "
              f"{'out plan (ceiling)':>18} {'out run':>8}")
        for stage, (req, inp, outp) in counted.items():
            p = plans.get(stage)
            if p is None:
                continue
            req_err = (p.paid_requests - req) / req if req else 0.0
            in_err = (p.input_tokens - inp) / inp if inp else 0.0
            print(f"{stage:20} {p.paid_requests:9,} {req:8,} {p.input_tokens:9,} {inp:9,} {in_err:7.1%} "
                  f"{p.output_tokens:18,} {outp:8,}  ({'exact' if p.exact else 'estimated'} requests)")
            out += [f"{tag}_{stage}_req_err={req_err:.3f}", f"{tag}_{stage}_in_err={in_err:.3f}"]
            if tag == "est":
                out += [f"{stage}_req_run={req}", f"{stage}_in_run={inp}", f"{stage}_out_run={outp}"]

    card_roles = {r: role_resource(r, CARD.role(r)) for r in ("generator", "classifier", "judge")}
    for judge_backend in ("openai", "openai_batch"):
        judge_env = {"IIMED_JUDGE_BACKEND": judge_backend, "IIMED_JUDGE_MODEL": "gpt-4o"}
        card_roles["judge"] = role_resource("judge", CARD.judge, judge_env)
        card = plan_run(wh, card_roles, CARD, scale="card",
                        output_tokens={"judge": args.judge_output, "generator": args.generator_output})
        print(f"\ncard profile at the card's counts, judge backend {judge_backend}:")
        print(card.table())
        for line in card.basis_lines():
            print(f"  - {line}")
        t = card.totals()
        out += [f"card_{judge_backend}_requests={t['requests']}", f"card_{judge_backend}_usd={t['usd']:.0f}",
                f"card_{judge_backend}_usd_max={t['usd_max']:.0f}", f"card_{judge_backend}_hours={t['hours']:.1f}"]
    print("assumptions:")
    for line in card.assumptions:
        print(f"  - {line}")
    print(" ".join(out))


if __name__ == "__main__":
    main()
