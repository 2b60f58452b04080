"""LLM spend: what a model stage will cost before anything is sent, and the hard cap that stops it.

    counter = CharsPerToken()                           # or a model's own tokenizer (resources/llm/tokens.py)
    work = StageWork("instruct_judged", role="judge", ...)
    work.add(counter.count(messages), n=1, missing=1, max_tokens=512)   # one planned request
    stage = work.finish(Prices(2.5, 10.0), expected_output=ExpectedOutput(180, "cache mean of 1,204 samples"),
                        throughput=Throughput(40.0, "stated"))
    plan = RunPlan("card", "warehouse", [stage, ...])
    print(plan.key_values())    # requests=… samples=… input_tokens=… output_tokens=… usd=… hours=…

    affordable([0.01, 0.02, 0.05], remaining=0.04)  # 2: the prefix of work whose ceiling cost fits

Pure Python, no Dagster. The plan counts what a stage pays for: a request whose samples are all in the cache
is free; a request with any sample missing is sent once with `n` = the missing samples, so its prompt is paid
once and each missing sample's completion is paid. Input tokens follow the model's tokenizer where one is
available offline, else a stated chars-per-token estimate; output tokens are the cache's measured mean for
that stage or model when there is one, else the configured budget (a ceiling).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

# A stated estimate when no tokenizer of the model is at hand: ~4 characters per token for English text with
# GPT-style BPE vocabularies, plus a few tokens per message for the chat format's role markers.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
# The budget guard estimates input more pessimistically: a hard cap must not be crossed on an estimate.
GUARD_CHARS_PER_TOKEN = 3.0

Messages = Sequence[tuple[str, str]] | Sequence[dict[str, str]]


def _turns(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages]


class TokenCounter(Protocol):
    """Input tokens of one chat request as the model will count them."""

    name: str

    def count(self, messages: Messages) -> int: ...


@dataclass(frozen=True)
class CharsPerToken:
    """The stated estimate: characters / `chars_per_token`, plus the chat format's per-message overhead."""

    chars_per_token: float = CHARS_PER_TOKEN
    per_message: int = TOKENS_PER_MESSAGE
    per_request: int = TOKENS_PER_REQUEST

    @property
    def name(self) -> str:
        return (f"estimate: {self.chars_per_token:g} chars/token + {self.per_message} tokens/message "
                f"+ {self.per_request}/request")

    def count(self, messages: Messages) -> int:
        turns = _turns(messages)
        chars = sum(len(content) for _, content in turns)
        return math.ceil(chars / self.chars_per_token) + self.per_message * len(turns) + self.per_request


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens. `discount` multiplies both (0.5: the OpenAI Batch API)."""

    prompt: float = 0.0
    completion: float = 0.0
    discount: float = 1.0

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.prompt + output_tokens * self.completion) * self.discount / 1e6

    @property
    def free(self) -> bool:
        return self.prompt == 0 and self.completion == 0

    def describe(self) -> str:
        if self.free:
            return "$0 (no price configured: self-hosted)"
        batch = f" × {self.discount:g} (batch)" if self.discount != 1.0 else ""
        return f"${self.prompt:g}/${self.completion:g} per 1M in/out{batch}"


@dataclass(frozen=True)
class ExpectedOutput:
    """Completion tokens expected per sample, and where the figure comes from."""

    tokens: float
    basis: str


@dataclass(frozen=True)
class Throughput:
    """Completion tokens per second the role sustains, and where the figure comes from (stated or measured)."""

    output_tokens_per_s: float
    basis: str
    fixed_hours: float | None = None  # a batch window: the stage takes this long whatever its size

    def hours(self, output_tokens: float) -> float:
        if self.fixed_hours is not None:
            return self.fixed_hours if output_tokens > 0 else 0.0
        return output_tokens / self.output_tokens_per_s / 3600 if self.output_tokens_per_s > 0 else 0.0


@dataclass
class StagePlan:
    """One model stage's planned work and cost."""

    stage: str
    role: str
    backend: str
    model: str
    requests: int            # requests the stage asks for (cached or not)
    samples: int             # completions asked for
    cache_hits: int          # samples already in the cache: not paid again
    paid_requests: int       # requests sent (a request with any sample missing)
    input_tokens: int        # prompt tokens paid (once per paid request)
    output_tokens: int       # completion tokens expected for the missing samples
    output_tokens_max: int   # at the configured budgets (the ceiling)
    usd: float
    usd_max: float
    hours: float
    token_method: str
    output_basis: str
    price_basis: str
    throughput_basis: str
    exact: bool              # requests rendered from stored rows (True) or estimated from counts (False)
    notes: list[str] = field(default_factory=list)

    @property
    def samples_to_pay(self) -> int:
        return self.samples - self.cache_hits

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples_to_pay": self.samples_to_pay}


@dataclass
class StageWork:
    """Accumulates a stage's planned requests, one `add` per request (or per group of equal ones)."""

    stage: str
    role: str
    backend: str
    model: str
    token_method: str
    exact: bool = True
    requests: int = 0
    samples: int = 0
    cache_hits: int = 0
    paid_requests: int = 0
    input_tokens: int = 0
    missing_samples: int = 0
    output_ceiling: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, input_tokens: int, *, n: int, missing: int, max_tokens: int, count: int = 1) -> None:
        """`count` requests of `input_tokens` each, asking `n` samples of which `missing` are not cached."""
        self.requests += count
        self.samples += n * count
        self.cache_hits += (n - missing) * count
        if missing > 0:
            self.paid_requests += count
            self.input_tokens += input_tokens * count
            self.missing_samples += missing * count
            self.output_ceiling += max_tokens * missing * count

    def finish(self, prices: Prices, expected: ExpectedOutput, throughput: Throughput) -> StagePlan:
        per_sample_max = self.output_ceiling / self.missing_samples if self.missing_samples else 0.0
        per_sample = min(expected.tokens, per_sample_max) if self.missing_samples else 0.0
        output = round(per_sample * self.missing_samples)
        return StagePlan(
            stage=self.stage, role=self.role, backend=self.backend, model=self.model, requests=self.requests,
            samples=self.samples, cache_hits=self.cache_hits, paid_requests=self.paid_requests,
            input_tokens=self.input_tokens, output_tokens=output, output_tokens_max=self.output_ceiling,
            usd=prices.cost(self.input_tokens, output), usd_max=prices.cost(self.input_tokens, self.output_ceiling),
            hours=throughput.hours(output), token_method=self.token_method, output_basis=expected.basis,
            price_basis=prices.describe(), throughput_basis=throughput.basis, exact=self.exact, notes=list(self.notes))


@dataclass
class RunPlan:
    """Every model stage of a run, with the assumptions behind the figures."""

    profile: str
    scale: str
    stages: list[StagePlan]
    assumptions: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, float]:
        s = self.stages
        return {
            "requests": sum(p.paid_requests for p in s), "samples": sum(p.samples_to_pay for p in s),
            "cache_hits": sum(p.cache_hits for p in s), "input_tokens": sum(p.input_tokens for p in s),
            "output_tokens": sum(p.output_tokens for p in s), "output_tokens_max": sum(p.output_tokens_max for p in s),
            "usd": sum(p.usd for p in s), "usd_max": sum(p.usd_max for p in s), "hours": sum(p.hours for p in s),
        }

    def key_values(self) -> str:
        """The final line: requests and samples to send, tokens, USD and hours (key=value)."""
        t = self.totals()
        return (f"profile={self.profile} scale={self.scale} requests={t['requests']} samples={t['samples']} "
                f"cache_hits={t['cache_hits']} input_tokens={t['input_tokens']} output_tokens={t['output_tokens']} "
                f"output_tokens_max={t['output_tokens_max']} usd={t['usd']:.2f} usd_max={t['usd_max']:.2f} "
                f"hours={t['hours']:.2f}")

    def rows(self) -> list[tuple]:
        return [(p.stage, p.role, p.model, f"{p.requests:,}", f"{p.samples:,}", f"{p.cache_hits:,}",
                 f"{p.paid_requests:,}", f"{p.input_tokens:,}", f"{p.output_tokens:,}", f"{p.output_tokens_max:,}",
                 f"${p.usd:,.2f}", f"${p.usd_max:,.2f}", f"{p.hours:,.2f}") for p in self.stages]

    HEADER = ("stage", "role", "model", "requests", "samples", "cache hits", "to send", "input tok", "output tok",
              "output max", "usd", "usd max", "hours")

    def table(self) -> str:
        """A fixed-width text table (the CLI)."""
        rows = [self.HEADER, *self.rows()]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(self.HEADER))]
        return "\n".join("  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w)
                                   for i, (v, w) in enumerate(zip(r, widths))) for r in rows)

    def markdown(self) -> str:
        head = "| " + " | ".join(self.HEADER) + " |\n|" + "---|" * len(self.HEADER) + "\n"
        return head + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in self.rows())

    def basis_lines(self) -> list[str]:
        """Per stage: how tokens were counted, where the output figure, price and throughput come from."""
        out = []
        for p in self.stages:
            how = "rendered from stored rows" if p.exact else "estimated from counts"
            out.append(f"{p.stage} ({p.role}, {p.model}): requests {how}; input tokens: "
                       f"{p.token_method}; output: {p.output_basis}; price: {p.price_basis}; "
                       f"time: {p.throughput_basis}" + ("; " + "; ".join(p.notes) if p.notes else ""))
        return out


# ---- the budget cap ---------------------------------------------------------------------------------------

def affordable(ceilings: Sequence[float], remaining: float) -> int:
    """How many leading work items fit in `remaining` USD when each costs at most its ceiling."""
    total = 0.0
    for i, cost in enumerate(ceilings):
        total += cost
        if total > remaining + 1e-12:
            return i
    return len(ceilings)


@dataclass
class SpendCaps:
    """Per-stage and per-run caps in USD (None: no cap)."""

    stage: float | None = None
    run: float | None = None

    @property
    def active(self) -> bool:
        return self.stage is not None or self.run is not None

    def remaining(self, stage_spent: float, run_spent: float) -> float:
        left = math.inf
        if self.stage is not None:
            left = min(left, self.stage - stage_spent)
        if self.run is not None:
            left = min(left, self.run - run_spent)
        return left

    def binding(self, stage_spent: float, run_spent: float) -> tuple[str, float, float]:
        """(which cap binds: 'stage' | 'run', its value, what was spent against it)."""
        stage_left = self.stage - stage_spent if self.stage is not None else math.inf
        run_left = self.run - run_spent if self.run is not None else math.inf
        if stage_left <= run_left:
            return "stage", float(self.stage), stage_spent
        return "run", float(self.run), run_spent


def budget_message(stage: str, scope: str, cap: float, spent: float, next_cost: float, done: int, left: int,
                   env_var: str) -> str:
    """What a stage stopped by its cap says: the spend, the cap, and how to resume."""
    return (f"LLM budget cap reached in {stage}: spent ${spent:.4f} of the {scope} cap ${cap:.4f}; the next "
            f"request would cost up to ${next_cost:.4f}. {done} samples finished and are in the cache; {left} were "
            f"not sent. To resume, raise the cap ({env_var}=<usd> or the role's max_usd_{scope} in the launchpad) "
            f"and rerun: cached samples are not paid again.")
