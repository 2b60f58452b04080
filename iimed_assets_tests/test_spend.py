"""LLM spend: the pure plan arithmetic and budget guard, the hard budget cap against a real loopback server with
per-token prices (stop, message, resume without re-paying, per-run cap across stages, the failed asset and its
alert), and the spend plan (CLI, tokenizer, cache hits, the Dagster view)."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from iimed_assets.core.llm import ChatRequest
from iimed_assets.core.spend import (
    CharsPerToken,
    ExpectedOutput,
    Prices,
    RunPlan,
    SpendCaps,
    StageWork,
    Throughput,
    affordable,
)
from iimed_assets.resources.llm import OpenAICompatibleLLM, role_resource
from iimed_assets.resources.llm.budget import SPEND_TABLE, BudgetExceeded, StageBudget
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.planning import ANSWER_SHARE_ASSUMED
from iimed_assets.profiles import CARD
from iimed_assets.testing.openai_loopback import LoopbackOpenAI

# $1 per token in and out: the loopback answers 10 prompt tokens and 5 completion tokens per choice, so one
# request with n=1 costs exactly $15.
DOLLAR_A_TOKEN = 1e6


def _reqs(k, n=1, max_tokens=8):
    return [ChatRequest.of([{"role": "user", "content": f"question {i}"}], n=n, max_tokens=max_tokens)
            for i in range(k)]


def _priced(server, **kw):
    return OpenAICompatibleLLM(base_url=server.url, model="priced", max_retries=1, backoff_base_s=0.01,
                               usd_per_1m_prompt_tokens=DOLLAR_A_TOKEN, usd_per_1m_completion_tokens=DOLLAR_A_TOKEN,
                               **kw)


# ---- pure -------------------------------------------------------------------------------------------------

def test_affordable_takes_the_prefix_that_fits():
    assert affordable([1, 2, 3], 3) == 2
    assert affordable([1, 2, 3], 6) == 3
    assert affordable([5], 4.99) == 0
    assert affordable([], 0) == 0


def test_caps_bind_on_the_tighter_one():
    caps = SpendCaps(stage=10, run=50)
    assert caps.remaining(4, 45) == 5 and caps.binding(4, 45) == ("run", 50.0, 45)
    assert caps.remaining(9, 10) == 1 and caps.binding(9, 10) == ("stage", 10.0, 9)
    assert not SpendCaps().active and SpendCaps().remaining(1e9, 1e9) == float("inf")


def test_chars_per_token_estimate_is_stated_and_counts_overhead():
    counter = CharsPerToken(4.0)
    assert counter.count([("user", "a" * 40)]) == 10 + 4 + 3
    assert counter.count([{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcde"}]) == 1 + 2 + 8 + 3
    assert "4 chars/token" in counter.name


def test_stage_work_pays_prompt_once_per_sent_request_and_only_missing_samples():
    work = StageWork("qa_samples", "generator", "openai", "m", "test")
    work.add(100, n=8, missing=8, max_tokens=1000)   # new prompt
    work.add(100, n=8, missing=2, max_tokens=1000)   # n raised from 6 to 8: two samples to send
    work.add(100, n=8, missing=0, max_tokens=1000)   # all cached: free
    plan = work.finish(Prices(1.0, 2.0), ExpectedOutput(400, "stated"), Throughput(1000, "stated"))
    assert (plan.requests, plan.samples, plan.cache_hits, plan.paid_requests) == (3, 24, 14, 2)
    assert plan.input_tokens == 200 and plan.output_tokens == 10 * 400 and plan.output_tokens_max == 10 * 1000
    assert plan.usd == pytest.approx((200 * 1.0 + 4000 * 2.0) / 1e6)
    assert plan.hours == pytest.approx(4000 / 1000 / 3600)
    # an expectation above the budget is clipped to the budget
    clipped = work.finish(Prices(), ExpectedOutput(5000, "stated"), Throughput(1, "stated"))
    assert clipped.output_tokens == clipped.output_tokens_max


def test_run_plan_final_line_is_key_value():
    work = StageWork("s", "judge", "openai", "gpt-4o", "test")
    work.add(1000, n=1, missing=1, max_tokens=500, count=10)
    stage = work.finish(Prices(2.5, 10.0, discount=0.5), ExpectedOutput(100, "stated"), Throughput(0, "batch", 24.0))
    plan = RunPlan("card", "warehouse", [stage])
    line = plan.key_values()
    fields = dict(kv.split("=") for kv in line.split())
    assert fields["requests"] == "10" and fields["input_tokens"] == "10000" and fields["output_tokens"] == "1000"
    assert float(fields["usd"]) == pytest.approx(round((10000 * 2.5 + 1000 * 10) * 0.5 / 1e6, 2))
    assert float(fields["hours"]) == 24.0
    assert "batch" in stage.price_basis and "stage" in plan.table() and plan.markdown().startswith("| stage")


# ---- the cap, against the loopback server ---------------------------------------------------------------

def test_stage_cap_stops_cleanly_and_a_higher_cap_resumes_without_repaying(tmp_path):
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    with LoopbackOpenAI() as server:
        # ceiling per request: prompt 'question i' at 3 chars/token (4) + 4 + 3 = 11 tokens, + max_tokens 8 = $19
        llm = _priced(server, max_usd_stage=100.0)
        with pytest.raises(BudgetExceeded) as info:
            llm.generate(_reqs(10), cache=wh)
        # 5 requests fit at their ceiling ($95), cost $75; the next fits ($19 of $25 left); then $10 < $19
        assert server.requests == 6
        err = info.value
        assert err.spent == pytest.approx(90.0) and err.cap == 100.0 and err.scope == "stage"
        assert err.done == 6 and err.left == 4
        message = str(err)
        assert "$90.0000" in message and "$100.0000" in message and "IIMED_MAX_USD_STAGE" in message
        assert "rerun" in message and "not paid again" in message
        # the finished samples are in the cache
        assert duckdb.connect(str(wh.database)).execute("SELECT count(*) FROM llm_cache").fetchone()[0] == 6

        richer = _priced(server, max_usd_stage=1000.0)
        out, stats = richer.generate(_reqs(10), cache=wh)
        assert server.requests == 10  # only the 4 missing requests were sent
        assert stats.cache_hits == 6 and richer.cost(stats) == pytest.approx(4 * 15.0)
        assert all(c.ok for row in out for c in row)


def test_no_cap_sends_everything_in_one_go():
    with LoopbackOpenAI() as server:
        out, stats = _priced(server).generate(_reqs(7))
        assert server.requests == 7 and stats.requests == 7


def test_run_cap_counts_every_stage_of_the_run(tmp_path):
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    with LoopbackOpenAI() as server:
        llm = _priced(server, max_usd_run=70.0)
        first = StageBudget("stage_a", SpendCaps(run=70.0), run_id="run-1", store=wh)
        llm.generate(_reqs(3), budget=first)            # $45, recorded for run-1
        assert first.run_spent() == pytest.approx(45.0)
        second = StageBudget("stage_b", SpendCaps(run=70.0), run_id="run-1", store=wh)
        with pytest.raises(BudgetExceeded) as info:
            llm.generate([ChatRequest.of([("user", f"other {i}")], max_tokens=8) for i in range(3)], budget=second)
        assert info.value.scope == "run" and info.value.spent == pytest.approx(60.0)  # one more fitted ($19 of $25)
        another_run = StageBudget("stage_b", SpendCaps(run=70.0), run_id="run-2", store=wh)
        assert another_run.run_spent() == 0.0
    rows = duckdb.connect(str(wh.database)).execute(
        f"SELECT run_id, stage, usd FROM {SPEND_TABLE} ORDER BY stage").fetchall()
    assert rows == [("run-1", "stage_a", 45.0), ("run-1", "stage_b", 15.0)]


def test_caps_come_from_the_environment():
    env = {"IIMED_MAX_USD_RUN": "500", "IIMED_JUDGE_MAX_USD_STAGE": "25.5"}
    judge = role_resource("judge", CARD.judge, env)
    generator = role_resource("generator", CARD.generator, env)
    assert judge.max_usd_stage == 25.5 and judge.max_usd_run == 500.0
    assert generator.max_usd_stage is None and generator.max_usd_run == 500.0


def test_capped_asset_fails_with_the_message_and_the_alert_reports_it(warehouse_path, tmp_path, monkeypatch):
    from iimed_assets.assets.instruct import instruct_responses
    from iimed_assets.assets.sources import instruct_prompt_rows
    from iimed_assets.resources.alerts import ENV_WEBHOOK_URL, AlertWebhook
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.sensors import evaluate_alerts

    from iimed_assets_tests.test_operations import Receiver

    wh = Warehouse(path=str(warehouse_path))
    from iimed_assets.sources.loaders import SAMPLE_DIR

    # the 112 bundled ChatDoctor rows (the default slice is 6)
    catalog = SourceCatalog(mode="sample", overrides={"healthcaremagic": str(SAMPLE_DIR / "chatdoctor/chatdoctor5k.jsonl")})
    home = tmp_path / "home"
    home.mkdir()
    # 10 prompt + 100 completion tokens per answer: $110 a request; the ceiling is the prompt at 3 chars/token + the
    # stage's 192-token budget, so a $1,500 cap stops the stage after a few requests (at most 13)
    with LoopbackOpenAI(completion_tokens_per_choice=100) as server, Receiver() as receiver, \
            dg.instance_for_test(temp_dir=str(home)) as instance:
        monkeypatch.setenv(ENV_WEBHOOK_URL, receiver.url)
        context = dg.build_sensor_context(instance=instance, cursor=None)
        evaluate_alerts(context, AlertWebhook())
        cursor = context.cursor
        assert dg.materialize([instruct_prompt_rows], partition_key="healthcaremagic", instance=instance,
                              resources={"warehouse": wh, "catalog": catalog}).success
        prompts = wh.fetch_one("SELECT count(*) FROM instruct_prompt_rows")[0]
        assert prompts > 13
        capped = _priced(server, max_usd_stage=1500.0)
        res = dg.materialize([instruct_responses], partition_key="healthcaremagic", instance=instance,
                             resources={"warehouse": wh, "generator": capped}, raise_on_error=False)
        assert not res.success
        sent = server.requests
        assert 0 < sent < prompts
        assert not wh.table_exists("instruct_responses")  # the partition was never swapped in
        failure = next(e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
        assert "budget cap reached in instruct_responses[healthcaremagic]" in str(failure.event_specific_data.error)

        context = dg.build_sensor_context(instance=instance, cursor=cursor)
        evaluate_alerts(context, AlertWebhook())
        alert = next(b for b in receiver.bodies if "Run failed" in b["text"])
        assert "budget cap reached" in alert["text"] and res.run_id in alert["text"]

        # a rerun with a higher cap finishes and pays only for what was not sent
        rich = _priced(server, max_usd_stage=1e9)
        again = dg.materialize([instruct_responses], partition_key="healthcaremagic", instance=instance,
                               resources={"warehouse": wh, "generator": rich})
        assert again.success and server.requests == prompts
        md = again.get_asset_materialization_events()[0].materialization.metadata
        assert md["generator/cache_hits"].value == sent
    spend = dict(duckdb.connect(str(warehouse_path)).execute(
        f"SELECT run_id, sum(usd) FROM {SPEND_TABLE} GROUP BY 1").fetchall())
    assert spend[res.run_id] == pytest.approx(110.0 * sent) and spend[again.run_id] == pytest.approx(110.0 * (prompts - sent))


# ---- the plan ---------------------------------------------------------------------------------------------

def test_gguf_counter_counts_what_the_embedded_engine_counts():
    from iimed_assets.resources.llm import LlamaCppLLM

    llm = LlamaCppLLM(n_threads=1)
    messages = [("system", "You are a careful medical examiner."),
                ("user", "A 54-year-old man has crushing chest pain radiating to the left arm. Next step?")]
    (completion,), = llm.generate([ChatRequest.of(messages, max_tokens=2, seed=0)])[0]
    assert completion.ok and llm.token_counter().count(messages) == completion.prompt_tokens
    assert "SmolLM2" in llm.token_counter().name


def _roles(gen_server, judge_server):
    from iimed_assets.resources.llm import EmbeddingClassifier

    generator = OpenAICompatibleLLM(base_url=gen_server.url, model="gen", backoff_base_s=0.01)
    judge = OpenAICompatibleLLM(base_url=judge_server.url, model="judge", backoff_base_s=0.01,
                                usd_per_1m_prompt_tokens=2.5, usd_per_1m_completion_tokens=10.0)
    return {"generator": generator, "classifier": EmbeddingClassifier(), "judge": judge}


def test_plan_matches_what_the_loopback_run_sends_and_counts_cache_hits(warehouse_path):
    from iimed_assets.assets.instruct import instruct_judged, instruct_responses
    from iimed_assets.assets.sources import instruct_prompt_rows
    from iimed_assets.planning import plan_run
    from iimed_assets.profiles import LAPTOP
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.testing.openai_loopback import Reply

    wh = Warehouse(path=str(warehouse_path))
    count = CharsPerToken().count  # the servers count with the stated estimate the plan uses for HTTP roles
    with LoopbackOpenAI(count_prompt_tokens=count) as gen, \
            LoopbackOpenAI(count_prompt_tokens=count, script=lambda call: Reply.json({"score": 9})) as judge:
        roles = _roles(gen, judge)
        assert dg.materialize([instruct_prompt_rows], partition_key="healthcaremagic",
                              resources={"warehouse": wh, "catalog": SourceCatalog(mode="sample")}).success
        before = {p.stage: p for p in plan_run(wh, roles, LAPTOP).stages}
        assert set(before) == {"instruct_responses", "instruct_judged", "r1_cluster_domains"}
        responses = before["instruct_responses"]
        assert responses.exact and responses.cache_hits == 0 and not before["instruct_judged"].exact
        # a judge that reads the whole response (judge_sees: full) is planned with the whole expected response in
        # its input; the default judge reads the final answer, a stated share of it
        full = {p.stage: p for p in plan_run(wh, roles, LAPTOP, settings={"instruct_judged": {"judge_sees": "full"}},
                                              assets=["instruct_responses", "instruct_judged"]).stages}
        judged_full, judged_answer = full["instruct_judged"], before["instruct_judged"]
        assert judged_full.requests == judged_answer.requests
        per_response = full["instruct_responses"].output_tokens / full["instruct_responses"].samples
        assert judged_full.input_tokens - judged_answer.input_tokens == pytest.approx(
            judged_answer.requests * per_response * (1 - ANSWER_SHARE_ASSUMED), rel=0.02)

        assert dg.materialize([instruct_responses], partition_key="healthcaremagic",
                              resources={"warehouse": wh, "generator": roles["generator"]}).success
        # requests and input tokens: exactly what the server received and counted
        assert responses.paid_requests == gen.requests
        assert responses.input_tokens == gen.prompt_tokens_counted
        assert responses.output_tokens_max == gen.requests * 192

        after = {p.stage: p for p in plan_run(wh, roles, LAPTOP).stages}
        assert after["instruct_responses"].cache_hits == responses.samples
        assert after["instruct_responses"].paid_requests == 0 and after["instruct_responses"].usd == 0
        judged = after["instruct_judged"]
        assert judged.exact  # rendered from the stored responses now
        assert dg.materialize([instruct_judged], partition_key="healthcaremagic",
                              resources={"warehouse": wh, "judge": roles["judge"]}).success
        assert judged.paid_requests == judge.requests and judged.input_tokens == judge.prompt_tokens_counted
        assert judged.usd_max == pytest.approx((judged.input_tokens * 2.5 + judged.output_tokens_max * 10) / 1e6)
        # measured output: the judge's cached answers now give the stage's mean
        again = {p.stage: p for p in plan_run(wh, roles, LAPTOP, output_tokens={"generator": 50}).stages}
        assert again["instruct_judged"].cache_hits == judged.samples
        assert again["instruct_responses"].output_basis.startswith("stated")


def test_plan_cli_and_the_card_scale(warehouse_path, capsys, monkeypatch):
    from iimed_assets.assets.sources import instruct_prompt_rows, qa_seed_rows
    from iimed_assets.cli import main
    from iimed_assets.resources.catalog import SourceCatalog

    wh = Warehouse(path=str(warehouse_path))
    for asset, key in ((qa_seed_rows, "medreason"), (qa_seed_rows, "medmcqa"), (instruct_prompt_rows, "apollo_patient_qa")):
        assert dg.materialize([asset], partition_key=key,
                              resources={"warehouse": wh, "catalog": SourceCatalog(mode="sample")}).success
    monkeypatch.setenv("IIMED_JUDGE_BACKEND", "openai_batch")
    monkeypatch.setenv("IIMED_JUDGE_MODEL", "gpt-4o")
    assert main(["plan", "--profile", "card", "--scale", "card", "--output-tokens", "judge=200",
                 "--output-tokens", "generator=3000"]) == 0
    out = capsys.readouterr().out
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert last["profile"] == "card" and last["scale"] == "card"
    assert {"requests", "input_tokens", "output_tokens", "usd", "hours"} <= set(last)
    assert "expected_rows" in out or "registry" in out  # the assumptions are written out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
             ("qa_samples", "qa_verified", "instruct_responses", "instruct_judged")}
    # section 2 at the card's seeds: 182,822 medmcqa + 10,178 medqa + 61,249 pubmedqa + 32,682 medreason, n=8
    assert "2,295,448" in lines["qa_samples"]
    assert float(last["usd"]) > 0 and "batch" in out


def test_spend_plan_asset_writes_the_table_and_warns_over_the_cap(warehouse_path):
    from iimed_assets.assets.sources import instruct_prompt_rows
    from iimed_assets.assets.spend import PLAN_WITHIN_BUDGET, llm_spend_plan
    from iimed_assets.resources.catalog import SourceCatalog

    wh = Warehouse(path=str(warehouse_path))
    assert dg.materialize([instruct_prompt_rows], partition_key="healthcaremagic",
                          resources={"warehouse": wh, "catalog": SourceCatalog(mode="sample")}).success
    with LoopbackOpenAI() as gen, LoopbackOpenAI() as judge:
        roles = _roles(gen, judge)
        roles["judge"] = OpenAICompatibleLLM(base_url=judge.url, model="judge", usd_per_1m_prompt_tokens=2.5,
                                             usd_per_1m_completion_tokens=10.0, max_usd_run=1e-6)
        res = dg.materialize([llm_spend_plan], resources={"warehouse": wh, **roles})
        assert gen.requests == 0 and judge.requests == 0  # planning calls no model
    md = res.get_asset_materialization_events()[0].materialization.metadata
    assert md["requests"].value > 0 and "| instruct_judged |" in md["plan"].value
    assert md["summary"].value.startswith("profile=")
    (check,) = res.get_asset_check_evaluations()
    assert check.check_name == PLAN_WITHIN_BUDGET and not check.passed
    rows = duckdb.connect(str(warehouse_path)).execute("SELECT stage, paid_requests FROM llm_spend_plan").fetchall()
    assert dict(rows)["instruct_responses"] == md["requests"].value // 2
