"""Any OpenAI-compatible chat-completions server: vLLM, SGLang, OpenAI (the GPT-4o judge).

Async with bounded concurrency per server; a fleet of servers (`base_urls`) with each prompt homed on one of
them; retries with exponential backoff and jitter on 429, 5xx, timeouts, connection errors and malformed
bodies, honouring Retry-After; other 4xx fail at once.

Time is bounded three ways (issue 21.10: a hung server used to cost 600 s x 7 tries per request). Each attempt's
timeout scales with the request's token budget (`first_token_s + max_tokens / min_tokens_per_s`); each request has
a total deadline over its retries (`deadline_attempts` attempt timeouts); and a server that has answered nothing
but timeouts and dropped connections for `max_outage_s` is given up: requests not yet sent to it fail at once
(marked transient, so a later run asks again). A hung server therefore costs minutes per stage, whatever the
number of requests. A constrained request sends its OutputSpec as
`response_format` (json_schema); a 4xx that names the structured-output parameters is reported as
STRUCTURED_OUTPUT_REJECTED, which `LLMResource.ask` turns into a free-text retry.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from iimed_assets.core.llm import STRUCTURED_OUTPUT_REJECTED, ChatRequest, Completion, UsageStats, sample_seed
from iimed_assets.resources.llm.base import LLMResource, OnDone, WorkItem

# What a server says when it does not support `response_format` json_schema (OpenAI-compatible servers answer
# 400 or 422; the message names the parameter).
_REJECTS_SCHEMA = re.compile(r"response_format|json_schema|structured|guided|grammar|not supported", re.I)


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
    timeout_s: float | None = Field(default=None, description="per-attempt timeout; None: first_token_s + "
                                                             "max_tokens / min_tokens_per_s")
    first_token_s: float = Field(default=60.0, description="time allowed for queueing and prefill in an attempt")
    min_tokens_per_s: float = Field(default=20.0, description="the slowest decoding an attempt is given time for")
    deadline_attempts: float = Field(default=3.0, description="a request's total deadline over its retries, in "
                                                              "attempt timeouts (from its first attempt)")
    max_outage_s: float = Field(default=180.0, description="a server answering only timeouts or dropped "
                                                           "connections this long is given up for the call")
    max_retries: int = Field(default=6, description="retries on 429, 5xx, timeouts, connection and body errors")
    backoff_base_s: float = Field(default=1.0, description="first backoff; doubles per retry, with jitter")
    backoff_max_s: float = Field(default=60.0)
    supports_n: bool = Field(default=True, description="send n samples in one request (else fan out)")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra request fields, e.g. {\"chat_template_kwargs\": "
                                          "{\"enable_thinking\": false}} or {\"top_k\": 20} for a vLLM server")

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.model}"

    @property
    def backend(self) -> str:
        return "openai"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_urls": self.server_urls(), "api_key_env": self.api_key_env,
                "max_concurrency": self.max_concurrency}

    @property
    def budget_chunk(self) -> int:
        # enough requests between two budget checks to keep every server's slots busy
        return max(64, 4 * self.max_concurrency * len(self.server_urls()))

    def server_urls(self) -> list[str]:
        urls = [u.strip() for u in self.base_urls if u.strip()] or [self.base_url]
        return list(dict.fromkeys(urls))

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        asyncio.run(self._run_async(work, on_done, stats))

    def parallel_requests(self) -> int:
        return self.max_concurrency * len(self.server_urls())

    def attempt_timeout(self, max_tokens: int) -> float:
        """Seconds one attempt may take: enough to generate `max_tokens` at `min_tokens_per_s` after a first token."""
        if self.timeout_s is not None:
            return self.timeout_s
        return self.first_token_s + max(0, max_tokens) / max(self.min_tokens_per_s, 1e-6)

    async def _run_async(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        import openai

        api_key = os.environ.get(self.api_key_env) or "EMPTY"  # local vLLM servers accept any key
        longest = max((self.attempt_timeout(self.budget(w.request.max_tokens)) for w in work), default=60.0)
        servers = [_Server(openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=longest, max_retries=0),
                           asyncio.Semaphore(self.max_concurrency)) for url in self.server_urls()]
        try:
            await asyncio.gather(*(self._one(servers, item, on_done, stats) for item in work))
        finally:
            for server in servers:
                await server.client.close()

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
                        on_done(item.index, si, Completion.failed(error.removeprefix(TRANSIENT),
                                                                  transient=error.startswith(TRANSIENT)))
                    break
                for si, c in zip(left, completions):
                    on_done(item.index, si, c)
                # A server that ignores n returns fewer choices: ask again for the rest.
                left = left[len(completions):]

    def _params(self, req: ChatRequest, n: int, seed: int | None) -> dict[str, Any]:
        return chat_body(self, req, n, seed)

    async def _call(self, servers: list["_Server"], home: int, req: ChatRequest, n: int, seed: int | None,
                    stats: UsageStats) -> tuple[list[Completion] | None, str]:
        """One chat.completions call with retries: (completions, "") or (None, why it failed).

        Attempt k goes to server (home + k) mod len(servers): a prompt stays on one server while it
        answers, and a retry after a 429, 5xx, timeout or dropped connection tries the next one.
        """
        import openai

        params = self._params(req, n, seed)
        timeout = self.attempt_timeout(params["max_tokens"])
        deadline: float | None = None  # starts with the first attempt (queueing for a slot is not the server's fault)
        transient = True
        error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            server = self._pick(servers, home, attempt)
            if server is None:
                return None, _transient(f"every server unresponsive for over {self.max_outage_s:.0f}s "
                                        f"(last: {error})")
            try:
                async with server.sem:
                    now = time.monotonic()
                    if server.given_up(now, self.max_outage_s):
                        continue  # it went down while this request queued: try the next one
                    deadline = deadline if deadline is not None else now + self.deadline_attempts * timeout
                    left = deadline - now
                    if left <= 0:
                        break
                    stats.requests += 1
                    # The low-level post skips the SDK's per-request type transform and model
                    # construction (~8 ms of CPU per call here), keeping the SDK's HTTP stack, auth
                    # and error types; the body is checked by parse_choices instead. wait_for bounds the
                    # attempt whatever the HTTP stack does (a server that accepts and never answers).
                    resp = await asyncio.wait_for(server.client.post(
                        "/chat/completions", body=params, cast_to=dict, options={"timeout": min(timeout, left)}),
                        timeout=min(timeout, left) + 5)
                server.answered()
                return parse_choices(resp, n), ""
            except openai.RateLimitError as exc:
                server.answered()
                retry_after = _retry_after(exc)
                error, transient = f"429: {str(exc)[:200]}", True
            except openai.APIStatusError as exc:
                server.answered()
                error = f"{exc.status_code}: {str(exc)[:200]}"
                if exc.status_code < 500 and exc.status_code != 408:
                    if req.output is not None and exc.status_code in (400, 422) and _REJECTS_SCHEMA.search(str(exc)):
                        return None, f"{STRUCTURED_OUTPUT_REJECTED}: {error}"
                    return None, error  # a client error will not get better by retrying
                retry_after, transient = _retry_after(exc), True
            except (openai.APITimeoutError, openai.APIConnectionError, asyncio.TimeoutError) as exc:
                server.silent(time.monotonic())
                error, transient = f"{type(exc).__name__}: {str(exc)[:200]}", True
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError) as exc:
                server.answered()
                error, transient = f"malformed response: {type(exc).__name__}: {str(exc)[:200]}", False
            if attempt == self.max_retries:
                break
            stats.retries += 1
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * (0.5 + random.random())
            delay = max(delay, retry_after) if retry_after is not None else delay
            if deadline is not None and time.monotonic() + delay >= deadline:
                error = f"{error} (deadline of {self.deadline_attempts * timeout:.0f}s reached)"
                break
            await asyncio.sleep(delay)
        return None, (_transient(error) if transient else error)

    def _pick(self, servers: list["_Server"], home: int, attempt: int) -> "_Server | None":
        """Attempt k goes to server (home + k) mod n, skipping servers given up for this call; None: all are."""
        now = time.monotonic()
        for k in range(len(servers)):
            server = servers[(home + attempt + k) % len(servers)]
            if not server.given_up(now, self.max_outage_s):
                return server
        return None


@dataclass
class _Server:
    client: Any
    sem: asyncio.Semaphore
    silent_since: float | None = None  # first timeout / dropped connection since the server last answered

    def answered(self) -> None:
        self.silent_since = None

    def silent(self, now: float) -> None:
        if self.silent_since is None:
            self.silent_since = now

    def given_up(self, now: float, max_outage_s: float) -> bool:
        return self.silent_since is not None and now - self.silent_since > max_outage_s


TRANSIENT = "transient: "  # the failure says nothing about the request (timeouts, 5xx, 429, an unresponsive server)


def _transient(error: str) -> str:
    return TRANSIENT + error


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def chat_body(llm: Any, req: ChatRequest, n: int, seed: int | None) -> dict[str, Any]:
    """The `/v1/chat/completions` body for one request of `llm` (its model, extra body and token budget), sent
    as it is here and written as a line of a Batch API file."""
    body: dict[str, Any] = {**llm.extra_body, "model": llm.model, "messages": req.message_dicts(), "n": n,
                            "temperature": req.temperature, "top_p": req.top_p, "max_tokens": llm.budget(req.max_tokens)}
    if seed is not None:
        body["seed"] = seed
    if req.stop:
        body["stop"] = list(req.stop)
    if req.output is not None:
        body["response_format"] = req.output.response_format()
    return body


def parse_choices(resp: dict, n: int) -> list[Completion]:
    """Choices of a chat.completion body -> Completions (a body without them raises, and is retried).

    Usage is per response: prompt tokens go to the first sample, completion tokens are split over the
    samples. A server that parses reasoning out (vLLM `--reasoning-parser`: `reasoning_content`/`reasoning`)
    gets it put back as a `<think>` block, so a stored response always holds its reasoning.
    """
    if not isinstance(resp, dict) or not isinstance(resp.get("choices"), list) or not resp["choices"]:
        raise ValueError(f"response has no choices: {str(resp)[:200]}")
    choices = sorted(resp["choices"], key=lambda c: c.get("index", 0))[:n]
    usage = resp.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    share, extra = divmod(int(usage.get("completion_tokens") or 0), len(choices))
    out = []
    for i, choice in enumerate(choices):
        message = choice.get("message") or {}
        text = message.get("content") or ""
        reasoning = (message.get("reasoning_content") or message.get("reasoning") or "").strip()
        if reasoning and "<think>" not in text:
            # an answer after the reasoning, or (cut off while thinking) an unclosed block: never an empty answer
            text = f"<think>\n{reasoning}\n</think>\n\n{text.lstrip()}" if text.strip() else f"<think>\n{reasoning}"
        out.append(Completion.answered(text, choice.get("finish_reason"), prompt_tokens if i == 0 else 0,
                                       share + (extra if i == 0 else 0)))
    return out
