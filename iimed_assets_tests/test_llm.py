"""LLM backends: the OpenAI-compatible client against a real loopback server, the request cache and resume,
the embedded SmolLM2 model, and the vLLM path (GPU only)."""

import importlib.util
import subprocess
import sys
import textwrap
import time

import pytest

from iimed_assets.core.llm import ChatRequest, cache_key
from iimed_assets.resources.llm import LlamaCppLLM, OpenAICompatibleLLM, VLLMOfflineLLM, usage_metadata
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.testing.openai_loopback import LoopbackOpenAI, Reply


def _reqs(k=5, n=1, **params):
    return [ChatRequest.of([{"role": "user", "content": f"question {i}"}], n=n, **params) for i in range(k)]


def _client(server, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("backoff_base_s", 0.01)
    return OpenAICompatibleLLM(base_url=server.url, model="scripted", **kw)


def test_n_samples_in_one_request():
    with LoopbackOpenAI() as s:
        out, stats = _client(s).generate(_reqs(5, n=3, seed=7))
        assert s.requests == 5 and all(c.body["n"] == 3 for c in s.calls)
    assert [len(o) for o in out] == [3] * 5
    assert out[2][1].text == "echo 1: question 2" and all(c.ok for o in out for c in o)
    assert stats.requests == 5 and stats.samples == 15 and stats.prompt_tokens == 50 and stats.completion_tokens == 75


def test_server_that_ignores_n_gets_fanned_out():
    with LoopbackOpenAI(supports_n=False) as s:
        out, stats = _client(s).generate(_reqs(4, n=3))
        assert s.requests == 4 * 3  # one call for n=3 gets 1 choice, then 2 more calls for the rest
    assert all(len(o) == 3 and all(c.ok for c in o) for o in out)


def test_fan_out_mode_gives_each_sample_its_own_seed():
    with LoopbackOpenAI() as s:
        _client(s, supports_n=False).generate(_reqs(2, n=3, seed=100))
        seeds = sorted((c.last_user, c.body["seed"], c.body["n"]) for c in s.calls)
    assert seeds == [("question 0", 100, 1), ("question 0", 101, 1), ("question 0", 102, 1),
                     ("question 1", 100, 1), ("question 1", 101, 1), ("question 1", 102, 1)]


def test_concurrency_is_bounded():
    with LoopbackOpenAI(latency_s=0.2) as s:
        started = time.perf_counter()
        _client(s, max_concurrency=4).generate(_reqs(16))
        elapsed = time.perf_counter() - started
        assert s.max_in_flight == 4
    assert elapsed < 16 * 0.2  # ran in parallel, not one by one


def test_fleet_spreads_prompts_and_keeps_each_prompt_on_one_server():
    with LoopbackOpenAI() as a, LoopbackOpenAI() as b:
        llm = OpenAICompatibleLLM(base_urls=[a.url, b.url], model="scripted", max_retries=2, backoff_base_s=0.01)
        out, stats = llm.generate(_reqs(10, n=2, seed=3))
        assert a.requests == 5 and b.requests == 5  # prompt i goes to server i mod 2
        assert {c.last_user for c in a.calls}.isdisjoint({c.last_user for c in b.calls})
    assert all(len(o) == 2 and all(c.ok for c in o) for o in out) and stats.samples == 20


def test_fleet_fails_over_when_a_server_is_down():
    with LoopbackOpenAI() as up:
        with LoopbackOpenAI() as down:
            dead_url = down.url
        llm = OpenAICompatibleLLM(base_urls=[dead_url, up.url], model="scripted", max_retries=2, backoff_base_s=0.01)
        out, stats = llm.generate(_reqs(6))
        assert up.requests == 6  # every prompt answered by the live server
    assert all(o[0].ok for o in out) and stats.retries == 3  # the 3 prompts homed on the dead server moved


def test_fleet_from_a_comma_separated_base_url():
    from iimed_assets.resources.llm_config import llm_from_env

    llm = llm_from_env("X", {"X_BACKEND": "openai", "X_MODEL": "m", "X_BASE_URL": "http://a:8000/v1, http://b:8000/v1"})
    assert llm.server_urls() == ["http://a:8000/v1", "http://b:8000/v1"] and llm.model_id == "openai-compatible:m"


def test_429_honours_retry_after():
    with LoopbackOpenAI() as s:
        s.script = lambda call: Reply.error(429, retry_after=0.5) if call.number == 1 else None
        started = time.perf_counter()
        out, stats = _client(s).generate(_reqs(1))
        assert time.perf_counter() - started >= 0.5
        assert s.requests == 2
    assert out[0][0].ok and stats.retries == 1 and stats.failures == 0


@pytest.mark.parametrize("fault", [Reply.error(500), Reply.error(503), Reply.malformed(), Reply.hang(3.0)],
                         ids=["500", "503", "malformed_json", "timeout"])
def test_transient_faults_are_retried(fault):
    with LoopbackOpenAI() as s:
        s.script = lambda call: fault if call.number == 1 else None
        out, stats = _client(s, timeout_s=0.5).generate(_reqs(1))
        assert s.requests == 2
    assert out[0][0].ok and out[0][0].text == "echo 0: question 0" and stats.retries == 1


def test_persistent_failure_is_recorded_not_accepted(tmp_path):
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    with LoopbackOpenAI() as s:
        s.script = lambda call: Reply.error(500)
        out, stats = _client(s, max_retries=2).generate(_reqs(2), cache=wh)
        assert s.requests == 2 * 3
        (c,), _ = out
        assert not c.ok and c.finish_reason == "error" and "500" in c.error
        assert stats.failures == 2 and stats.retries == 4
        s.script = None  # the server recovers: failures were not cached, so they are asked again
        out, stats = _client(s).generate(_reqs(2), cache=wh)
        assert all(o[0].ok for o in out) and stats.cache_hits == 0 and s.requests == 8


def test_client_errors_are_not_retried():
    with LoopbackOpenAI() as s:
        s.script = lambda call: Reply.error(400)
        out, stats = _client(s).generate(_reqs(1))
        assert s.requests == 1
    assert not out[0][0].ok and out[0][0].error.startswith("400")


def test_truncated_and_empty_answers_are_recorded_as_such():
    with LoopbackOpenAI() as s:
        s.script = lambda call: (Reply(contents=["<think>cut off"], finish_reason="length") if call.number == 1
                                 else Reply(contents=["   "]))
        out, stats = _client(s, max_concurrency=1).generate(_reqs(2))
    assert (out[0][0].finish_reason, out[0][0].text) == ("length", "<think>cut off")
    assert out[1][0].finish_reason == "empty"
    assert stats.finish_reasons == {"length": 1, "empty": 1}


def test_cache_serves_finished_samples_and_keys_follow_params(tmp_path):
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    with LoopbackOpenAI() as s:
        llm = _client(s)
        llm.generate(_reqs(3, n=2, temperature=0.7), cache=wh)
        assert s.requests == 3
        out, stats = llm.generate(_reqs(3, n=2, temperature=0.7), cache=wh)
        assert s.requests == 3 and stats.cache_hits == 6 and all(c.cached for o in out for c in o)
        # n grows from 2 to 3: only the third sample of each prompt is new
        llm.generate(_reqs(3, n=3, temperature=0.7), cache=wh)
        assert s.requests == 6 and all(c.body["n"] == 1 for c in s.calls[3:])
        # another temperature or another template is another key
        llm.generate(_reqs(3, n=2, temperature=0.8), cache=wh)
        assert s.requests == 9
    a = ChatRequest.of([{"role": "user", "content": "Q: x"}])
    b = ChatRequest.of([{"role": "user", "content": "Question: x"}])
    assert cache_key("m", a, 0) != cache_key("m", b, 0) != cache_key("m", b, 1)
    assert cache_key("m", a, 0) != cache_key("other-model", a, 0)


KILLED_RUN = textwrap.dedent("""
    import sys
    from iimed_assets.core.llm import ChatRequest
    from iimed_assets.resources.llm import OpenAICompatibleLLM
    from iimed_assets.resources.warehouse import Warehouse
    url, db = sys.argv[1], sys.argv[2]
    reqs = [ChatRequest.of([{"role": "user", "content": f"question {i}"}]) for i in range(30)]
    llm = OpenAICompatibleLLM(base_url=url, model="scripted", max_concurrency=1, cache_flush_every=1)
    llm.generate(reqs, cache=Warehouse(path=db))
""")


def test_killed_run_resumes_without_paying_twice(tmp_path):
    """Kill a run part-way; the rerun sends only what was not finished and cached."""
    db = tmp_path / "w.duckdb"
    with LoopbackOpenAI(latency_s=0.1) as s:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, s.url, str(db)])
        deadline = time.time() + 60
        while s.requests < 8 and time.time() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        first = s.requests
        wh = Warehouse(path=str(db))
        cached = wh.fetch_one("SELECT count(*) FROM llm_cache")[0]
        assert 0 < cached < 30
        assert first - cached <= 1  # at most the one request in flight at the kill was lost
        reqs = [ChatRequest.of([{"role": "user", "content": f"question {i}"}]) for i in range(30)]
        out, stats = _client(s).generate(reqs, cache=wh)
        second = s.requests - first
    assert second == 30 - cached and stats.cache_hits == cached
    assert [o[0].text for o in out] == [f"echo 0: question {i}" for i in range(30)]
    assert first + second <= 30 + 1


def test_usage_metadata_and_cost():
    with LoopbackOpenAI() as s:
        llm = _client(s, usd_per_1m_prompt_tokens=2.5, usd_per_1m_completion_tokens=10.0)
        _, stats = llm.generate(_reqs(4, n=2))
    md = usage_metadata(stats, llm)
    assert md["llm/prompt_tokens"] == 40 and md["llm/completion_tokens"] == 40
    assert md["llm/cost_usd"] == pytest.approx((40 * 2.5 + 40 * 10.0) / 1e6)
    assert md["llm/requests"] == 4 and md["llm/samples"] == 8


def test_progress_lines_show_rate_eta_and_cost():
    lines = []
    with LoopbackOpenAI(latency_s=0.05) as s:
        _client(s, max_concurrency=1, progress_every_s=0.0, usd_per_1m_completion_tokens=1.0).generate(
            _reqs(3), log=lines.append)
    assert any("samples/s" in l and "ETA" in l and "projected $" in l for l in lines)


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-secret-value")
    with LoopbackOpenAI() as s:
        llm = _client(s, api_key_env="MY_TEST_KEY")
        assert "sk-secret-value" not in repr(llm) and "sk-secret-value" not in str(llm.model_dump())
        llm.generate(_reqs(1))
        (call,) = s.calls
    auth = {k.lower(): v for k, v in call.headers.items()}["authorization"]
    assert auth == "Bearer sk-secret-value"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_embedded_smollm2_answers_a_real_prompt(tmp_path):
    llm = LlamaCppLLM(n_ctx=1024)
    req = ChatRequest.of([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                         max_tokens=24, seed=0, temperature=0.0)
    out, stats = llm.generate([req], cache=Warehouse(path=str(tmp_path / "w.duckdb")))
    c = out[0][0]
    assert c.ok and c.text.strip() and c.finish_reason in {"stop", "length"}
    assert c.prompt_tokens > 5 and c.completion_tokens > 0
    assert "paris" in c.text.lower()
    assert llm.model_id == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_without_gpu_extra_names_it():
    with pytest.raises(RuntimeError, match=r"gpu. extra"):
        VLLMOfflineLLM(model="Qwen/Qwen2.5-0.5B-Instruct").engine()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm (the gpu extra) is not installed: no GPU machine in this environment")
def test_vllm_offline_engine_generates():  # pragma: no cover - runs on the GPU machine only
    import os

    llm = VLLMOfflineLLM(model=os.environ.get("IIMED_VLLM_TEST_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"),
                         gpu_memory_utilization=0.5, max_model_len=2048)
    out, stats = llm.generate(_reqs(4, n=3, max_tokens=32, temperature=0.8, seed=1))
    assert all(len(o) == 3 and all(c.ok and c.completion_tokens > 0 for c in o) for o in out)


@pytest.mark.parametrize(
    "env, cls, model_id",
    [
        ({}, LlamaCppLLM, "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"),
        ({"X_BACKEND": "openai", "X_MODEL": "gpt-4o", "X_BASE_URL": "https://api.openai.com/v1"},
         OpenAICompatibleLLM, "openai-compatible:gpt-4o"),
        ({"X_BACKEND": "vllm", "X_MODEL": "Qwen/Qwen3-235B-A22B", "X_TENSOR_PARALLEL": "8"},
         VLLMOfflineLLM, "vllm:Qwen/Qwen3-235B-A22B"),
    ],
)
def test_backend_from_environment(env, cls, model_id):
    from iimed_assets.resources.llm_config import llm_from_env

    llm = llm_from_env("X", env)
    assert isinstance(llm, cls) and llm.model_id == model_id


def test_backend_from_environment_rejects_unknown():
    from iimed_assets.resources.llm_config import llm_from_env

    with pytest.raises(ValueError, match="not one of"):
        llm_from_env("X", {"X_BACKEND": "gpt"})
    with pytest.raises(ValueError, match="X_MODEL"):
        llm_from_env("X", {"X_BACKEND": "openai"})
