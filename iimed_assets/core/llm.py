"""The LLM protocol shared by every backend: requests, completions, cache keys and accounting.

Pure Python. A backend turns `ChatRequest`s into `Completion`s; everything else here (cache keys,
usage totals, cost, the rules every backend shares: empty text is `finish_reason="empty"`, a `<think>` block
is not the answer, a structured answer is one JSON object) is the same whatever answers the requests.

Constrained answers (a label, a score, a verdict) carry an `OutputSpec`: a JSON schema that each backend
enforces with its own structured-output support (llama.cpp: a grammar built from the schema; vLLM: structured
outputs; OpenAI-compatible servers: `response_format` json_schema). The spec is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class OutputSpec:
    """A JSON schema the answer must follow (one JSON object). Frozen and hashable: `schema_json` is the
    schema serialised with sorted keys, so equal schemas give equal cache keys."""

    name: str
    schema_json: str

    @staticmethod
    def of(name: str, schema: dict[str, Any]) -> "OutputSpec":
        return OutputSpec(name, json.dumps(schema, sort_keys=True, separators=(",", ":")))

    @property
    def schema(self) -> dict[str, Any]:
        return json.loads(self.schema_json)

    def response_format(self) -> dict[str, Any]:
        """The OpenAI chat-completions `response_format` for this spec (OpenAI, vLLM and SGLang servers).

        String length bounds are left out: OpenAI's strict mode has not always accepted them (the prompt asks
        for a short text and the token budget bounds it); llama.cpp and vLLM's offline engine get them."""
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": _without(self.schema, {"maxLength", "minLength"}),
                                "strict": True}}


def _without(schema: Any, keys: set[str]) -> Any:
    if isinstance(schema, dict):
        return {k: _without(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_without(v, keys) for v in schema]
    return schema


@dataclass(frozen=True)
class ChatRequest:
    """One prompt, sampled `n` times."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and order-preserving
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()
    output: OutputSpec | None = None  # a constrained answer: the backend enforces this JSON schema

    @staticmethod
    def of(messages: Sequence[dict[str, str]] | Sequence[tuple[str, str]], **params: Any) -> "ChatRequest":
        turns = tuple((m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages)
        if "stop" in params and params["stop"] is not None:
            params["stop"] = tuple(params["stop"])
        return ChatRequest(messages=turns, **params)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def sampling(self) -> dict[str, Any]:
        """The parameters that change what comes back (n is not one: each sample is keyed on its own)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "stop": list(self.stop)}


@dataclass
class Completion:
    """One sampled answer. `error` is set when no answer came back.

    `attempts`: how many times this sample has been asked, over every run (an empty or failed answer is asked
    again by later runs, up to a bound: see `settled`). `transient`: the failure says nothing about the request
    (a timeout, a dropped connection, a 5xx or 429, an unresponsive server), so it never counts toward that
    bound."""

    text: str
    finish_reason: str  # stop | length | content_filter | empty | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    attempts: int = 1
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered_something(self) -> bool:
        """A real answer: not a failure, not empty text."""
        return self.ok and self.finish_reason != "empty"

    def settled(self, max_attempts: int) -> bool:
        """Final: nothing to gain by asking again. An answer is; an empty or failed one only after `max_attempts`
        tries (a transient failure never is: the next run asks again)."""
        if self.answered_something:
            return True
        return not self.transient and self.attempts >= max_attempts

    @staticmethod
    def answered(text: str | None, finish_reason: str | None, prompt_tokens: int = 0,
                 completion_tokens: int = 0) -> "Completion":
        """A backend's answer. The one place of the rule: empty text is `finish_reason="empty"`, never a
        silent answer."""
        text = text or ""
        finish = finish_reason or "unknown"
        if not text.strip():
            finish = "empty"
        return Completion(text, finish, prompt_tokens, completion_tokens)

    @staticmethod
    def failed(error: str, transient: bool = False) -> "Completion":
        return Completion("", "error", error=error[:500], transient=transient)


# Set on a Completion's `error` when a server refused the request's OutputSpec (not a transient failure):
# the caller falls back to free text and its parsers (see LLMResource.ask).
STRUCTURED_OUTPUT_REJECTED = "structured_output_rejected"


def cache_key(model_id: str, request: ChatRequest, sample_index: int) -> str:
    """Hash of (backend model, sampling parameters, rendered messages, sample index).

    A different prompt template renders different messages and so a different key; so does any change
    of temperature, top_p, max_tokens, seed, stop or of the structured-output schema.
    """
    payload: dict[str, Any] = {"model": model_id, "sampling": request.sampling(), "messages": request.messages,
                               "i": sample_index}
    if request.output is not None:  # only when set, so free-text keys stay what they were
        payload["output"] = [request.output.name, request.output.schema_json]
    payload_text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload_text.encode("utf-8")).hexdigest()


def sample_seed(seed: int | None, sample_index: int) -> int | None:
    """Each sample of a request gets its own seed, so fanned-out samples differ and stay reproducible."""
    return None if seed is None else seed + sample_index


@dataclass
class UsageStats:
    requests: int = 0          # HTTP requests / engine calls actually made
    samples: int = 0           # completions asked for
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    asked_again: int = 0       # samples stored empty or failed by an earlier run, asked again (issue 21)
    from_other_runs: int = 0   # samples a concurrent run was answering: awaited, not sent again
    recovered: int = 0         # completions of a killed run replayed from its journal

    def add_completion(self, c: Completion) -> None:
        self.finish_reasons[c.finish_reason] = self.finish_reasons.get(c.finish_reason, 0) + 1
        if c.cached:
            self.cache_hits += 1
            return
        if not c.ok:
            self.failures += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    def merge(self, other: "UsageStats") -> None:
        """Add another call's totals (a stage that calls the LLM several times reports one sum)."""
        for name in ("requests", "samples", "cache_hits", "failures", "retries", "prompt_tokens", "completion_tokens",
                     "asked_again", "from_other_runs", "recovered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wall_s += other.wall_s
        for reason, n in other.finish_reasons.items():
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + n

    def drop_failures(self, count: int, reason: str = "error") -> None:
        """Forget `count` failed samples that were asked again (a structured-output rejection retried as free
        text): the retry's own outcome is what counts."""
        self.failures -= count
        self.samples -= count
        left = self.finish_reasons.get(reason, 0) - count
        if left > 0:
            self.finish_reasons[reason] = left
        else:
            self.finish_reasons.pop(reason, None)

    def cost(self, usd_per_1m_prompt: float, usd_per_1m_completion: float) -> float:
        return (self.prompt_tokens * usd_per_1m_prompt + self.completion_tokens * usd_per_1m_completion) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading answers ------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def strip_think(text: str | None) -> str | None:
    """The answer without its reasoning: every closed `<think>…</think>` block removed, and the text before a
    lone `</think>` (chat templates that open the block in the prompt, e.g. Qwen3's). None when a think block
    opens and never closes (cut off while thinking: there is no answer)."""
    if text is None:
        return None
    body = _THINK_BLOCK.sub(" ", text)
    closing = body.lower().rfind("</think>")
    if closing >= 0:
        body = body[closing + len("</think>"):]
    if "<think>" in body.lower():
        return None
    return body.strip()


def parse_json_answer(text: str | None) -> dict[str, Any] | None:
    """A structured answer: after the reasoning, the whole remaining text must be one JSON object (a code
    fence around it is tolerated). Anything else is None: a JSON object quoted inside other text (e.g. a
    judge echoing its prompt) is not an answer."""
    body = strip_think(text)
    if not body:
        return None
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---- constrained tasks ------------------------------------------------------------------------------------

UNKNOWN_LABEL = "unknown"


@dataclass(frozen=True)
class ChoiceTask:
    """Put a text into one of `labels` (the section-3 domain vote is one).

    `render(text, structured)` gives the chat messages (structured: the answer is constrained by `spec`);
    `parse(answer, structured)` gives a label or UNKNOWN_LABEL. `exemplars` (label -> example texts written for
    the task) let a classifier that does not generate (an embedding classifier) decide too.
    """

    name: str
    labels: tuple[str, ...]
    spec: OutputSpec
    render: Callable[[str, bool], list[dict[str, str]]]
    parse: Callable[[str, bool], str]
    exemplars: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
