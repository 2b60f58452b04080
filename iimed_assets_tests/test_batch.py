"""The OpenAI Batch API backend end to end against the loopback server's files + batches endpoints: files within
the limits, results into the request cache, batch ids in the warehouse, re-attaching after a killed run, only
failed or expired requests resubmitted, batch prices, progress in the log."""

from __future__ import annotations

import json

import duckdb
import pytest

from iimed_assets.core.llm import ChatRequest, OutputSpec
from iimed_assets.profiles import CARD
from iimed_assets.resources.llm import OpenAIBatchLLM, OpenAICompatibleLLM, role_resource
from iimed_assets.resources.llm.openai_batch import BATCHES_TABLE, recorded_batches
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.testing.openai_loopback import LoopbackOpenAI, Reply


def _reqs(k, n=1, prefix="question"):
    return [ChatRequest.of([{"role": "user", "content": f"{prefix} {i}"}], n=n, max_tokens=64, seed=1) for i in range(k)]


def _batch(server, **kw):
    kw.setdefault("poll_interval_s", 0.01)
    kw.setdefault("progress_every_s", 0.0)
    return OpenAIBatchLLM(base_url=server.url, model="gpt-4o", usd_per_1m_prompt_tokens=2.5,
                          usd_per_1m_completion_tokens=10.0, **kw)


def _wh(tmp_path):
    return Warehouse(path=str(tmp_path / "w.duckdb"))


def test_batch_answers_into_the_cache_at_batch_prices(tmp_path):
    wh = _wh(tmp_path)
    lines: list[str] = []
    with LoopbackOpenAI() as server:
        llm = _batch(server, max_requests_per_file=4)
        out, stats = llm.generate(_reqs(10, n=3), cache=wh, log=lines.append)
        # 10 request lines in files of at most 4: three batches, no chat-completions call
        assert len(server.batches.created) == 3
        assert [len(server.batches.requests_of(b)) for b in server.batches.created] == [4, 4, 2]
        assert server.batches.lines_answered == 10 and server.answered_samples == 30
    assert all(len(row) == 3 and all(c.ok for c in row) for row in out)
    assert out[3][2].text == "echo 2: question 3"
    assert stats.samples == 30 and stats.prompt_tokens == 100 and stats.completion_tokens == 150
    assert llm.cost(stats) == pytest.approx((100 * 2.5 + 150 * 10.0) * 0.5 / 1e6)  # half the list price
    # progress with a rate and an ETA in the log, and the batch ids in the warehouse
    assert any("requests done" in line and "ETA" in line for line in lines)
    rows = recorded_batches(wh)
    assert len(rows) == 3 and {r[2] for r in rows} == {"completed"}
    # a second call is served by the cache, nothing submitted
    with LoopbackOpenAI() as again:
        _, cached = _batch(again).generate(_reqs(10, n=3), cache=wh)
        assert again.batches.created == [] and cached.cache_hits == 30


def test_request_bodies_carry_n_seed_and_the_schema():
    spec = OutputSpec.of("score", {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]})
    with LoopbackOpenAI(script=lambda call: Reply.json({"score": 7})) as server:
        out, _ = _batch(server).generate([ChatRequest.of([("user", "rate it")], n=1, max_tokens=32, seed=5,
                                                          output=spec)])
        data = server.batches.files[server.batches.batches[server.batches.created[0]].input_file_id]["bytes"]
    line = json.loads(data.decode().splitlines()[0])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"]["seed"] == 5 and line["body"]["n"] == 1 and line["body"]["response_format"]["type"] == "json_schema"
    assert json.loads(out[0][0].text) == {"score": 7}


def test_files_stay_within_the_byte_limit():
    llm = OpenAIBatchLLM(model="m", max_file_bytes=2_000)
    from iimed_assets.resources.llm.openai_batch import _Pending

    pending = [_Pending(f"id{i}", {"messages": [{"role": "user", "content": "x" * 300}]}) for i in range(20)]
    files = llm.files_for(pending)
    assert len(files) > 1 and all(len(f) <= 2_000 for f in files)
    assert sum(f.count(b"\n") for f in files) == 20
    with pytest.raises(ValueError, match="over the"):
        llm.files_for([_Pending("big", {"x": "y" * 5_000})])


def test_only_failed_and_expired_requests_are_resubmitted(tmp_path):
    wh = _wh(tmp_path)
    # two lines fail with a 500 in the error file; the first batch expires after answering 6 of its 10 lines
    failing = {"question 1", "question 7"}
    state = {"round": 0}

    def script(call):
        if call.last_user in failing and state["round"] == 0:
            return Reply.error(500)
        return None

    with LoopbackOpenAI(script=script) as server:
        server.batches.expire_after = 6
        llm = _batch(server)
        lines: list[str] = []

        def log(line):
            lines.append(line)
            if "resubmitting" in line:  # the second round: no expiry, no failures
                server.batches.expire_after = None
                state["round"] = 1

        out, stats = llm.generate(_reqs(10), cache=wh, log=log)
        first, second = server.batches.created
        # answered in round 1: lines 0-5 minus the failing 1 -> 5; resubmitted: failing 1 + expired 6..9 = 5
        resubmitted = server.batches.requests_of(second)
        assert len(resubmitted) == 5
        contents = [json.loads(ln)["body"]["messages"][0]["content"]
                    for ln in server.batches.files[server.batches.batches[second].input_file_id]["bytes"].decode().splitlines()]
        assert sorted(contents) == ["question 1", "question 6", "question 7", "question 8", "question 9"]
    assert all(c.ok for row in out for c in row) and stats.samples == 10
    assert any("expired" in line for line in lines)
    statuses = dict((r[0], r[2]) for r in recorded_batches(wh))
    assert statuses == {first: "expired", second: "completed"}


def test_what_keeps_failing_is_recorded_as_a_failure_to_ask_again(tmp_path):
    wh = _wh(tmp_path)
    with LoopbackOpenAI(script=lambda call: Reply.error(500) if call.last_user == "question 2" else None) as server:
        out, stats = _batch(server, max_resubmits=1).generate(_reqs(4), cache=wh)
        assert len(server.batches.created) == 2  # the first round and one resubmission
    assert not out[2][0].ok and "status 500" in out[2][0].error and stats.failures == 1
    con = duckdb.connect(str(wh.database))
    # the failure is kept with its attempt count, never as an answer: the next run asks it again (issue 21)
    assert con.execute("SELECT count(*) FROM llm_cache WHERE finish_reason <> 'error'").fetchone()[0] == 3
    assert con.execute("SELECT attempts FROM llm_cache WHERE finish_reason = 'error'").fetchall() == [(1,)]


def test_a_killed_run_reattaches_instead_of_resubmitting(tmp_path):
    wh = _wh(tmp_path)
    with LoopbackOpenAI() as server:
        server.batches.polls_to_complete = 10**9  # never finishes while the first run waits
        killed = _batch(server, max_wait_s=0.05)
        out, _ = killed.generate(_reqs(6), cache=wh)
        assert len(server.batches.created) == 1 and not any(c.ok for row in out for c in row)
        assert "rerun to re-attach" in out[0][0].error
        (bid, _, status, requests, *_), = recorded_batches(wh)
        assert requests == 6 and status in ("validating", "in_progress")

        # the batch finishes on the provider's side; a new run (new resource, same warehouse) collects it
        server.batches.polls_to_complete = 1
        lines: list[str] = []
        out, stats = _batch(server).generate(_reqs(6), cache=wh, log=lines.append)
        assert server.batches.created == [bid]  # nothing new was submitted
        assert any("re-attaching" in line and bid in line for line in lines)
    assert all(c.ok for row in out for c in row) and stats.samples == 6
    con = duckdb.connect(str(wh.database))
    assert con.execute(f"SELECT status FROM {BATCHES_TABLE}").fetchall() == [("completed",)]
    assert con.execute("SELECT count(*) FROM llm_cache").fetchone()[0] == 6


def test_batch_shares_the_cache_with_the_synchronous_api(tmp_path):
    wh = _wh(tmp_path)
    with LoopbackOpenAI() as server:
        sync = OpenAICompatibleLLM(base_url=server.url, model="gpt-4o")
        sync.generate(_reqs(3), cache=wh)
        _, stats = _batch(server).generate(_reqs(5), cache=wh)
        assert stats.cache_hits == 3 and server.batches.requests_of(server.batches.created[0]) and \
            len(server.batches.requests_of(server.batches.created[0])) == 2


def test_a_budget_cap_holds_for_batches(tmp_path):
    from iimed_assets.resources.llm.budget import BudgetExceeded

    with LoopbackOpenAI() as server:
        # $1 a token at list prices, $0.5 in a batch; ceiling per request (11 + 64 tokens) = $37.5; actual $7.5
        llm = OpenAIBatchLLM(base_url=server.url, model="gpt-4o", poll_interval_s=0.01, max_requests_per_file=2,
                             usd_per_1m_prompt_tokens=1e6, usd_per_1m_completion_tokens=1e6, max_usd_stage=60.0)
        with pytest.raises(BudgetExceeded) as info:
            llm.generate(_reqs(10), cache=_wh(tmp_path))
        # one request fits at a time ($37.5 of $60), costs $7.5: $52.5, $45, $37.5 left still fit one; at $30 left
        # the next one's ceiling does not: 4 batches, $30 spent, never more than the cap
        assert info.value.spent == pytest.approx(7.5 * 4) and len(server.batches.created) == 4
        assert info.value.left == 6


def test_the_judge_role_can_be_the_batch_api():
    judge = role_resource("judge", CARD.judge, {"IIMED_JUDGE_BACKEND": "openai_batch", "IIMED_JUDGE_MODEL": "gpt-4o",
                                                 "IIMED_JUDGE_BASE_URL": "https://api.openai.com/v1"})
    assert isinstance(judge, OpenAIBatchLLM) and judge.backend == "openai_batch"
    assert judge.prices().discount == 0.5 and judge.usd_per_1m_prompt_tokens == 2.5
    # the backend alone: the card's judge model and endpoint carry over (the same API, synchronous or batched)
    alone = role_resource("judge", CARD.judge, {"IIMED_JUDGE_BACKEND": "openai_batch"})
    assert isinstance(alone, OpenAIBatchLLM) and (alone.model, alone.base_url) == (judge.model, judge.base_url)
    # another kind of backend does not inherit an OpenAI model name
    with pytest.raises(ValueError, match="IIMED_JUDGE_MODEL"):
        role_resource("judge", CARD.judge, {"IIMED_JUDGE_BACKEND": "vllm"})
