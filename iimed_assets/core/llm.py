"""The LLM protocol shared by every backend: requests, completions, cache keys and accounting.

Pure Python. A backend turns `ChatRequest`s into `Completion`s; everything else here (cache keys,
usage totals, cost) is the same whatever answers the requests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


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
    """One sampled answer. `error` is set when no answer came back (it is never cached)."""

    text: str
    finish_reason: str  # stop | length | content_filter | empty | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def cache_key(model_id: str, request: ChatRequest, sample_index: int) -> str:
    """Hash of (backend model, sampling parameters, rendered messages, sample index).

    A different prompt template renders different messages and so a different key; so does any change
    of temperature, top_p, max_tokens, seed or stop.
    """
    payload = json.dumps(
        {"model": model_id, "sampling": request.sampling(), "messages": request.messages, "i": sample_index},
        ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


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
        for name in ("requests", "samples", "cache_hits", "failures", "retries", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wall_s += other.wall_s
        for reason, n in other.finish_reasons.items():
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + n

    def cost(self, usd_per_1m_prompt: float, usd_per_1m_completion: float) -> float:
        return (self.prompt_tokens * usd_per_1m_prompt + self.completion_tokens * usd_per_1m_completion) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
