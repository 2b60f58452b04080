"""The role resources' shared base: the generation loop (cache, resume, progress, accounting), constrained
answers with a fallback to free text, and what every stage shows about the model it used.

    completions, stats = generator.generate(requests, cache=warehouse, log=context.log.info)
    answers = judge.ask(build, cache=warehouse, log=...)      # build(structured) -> requests
    result = classifier.label(texts, task, cache=warehouse, log=...)

`RoleResource` is what a recipe role needs (`label`, `describe`, `model_id`); `LLMResource` adds generation.
The backends subclass `LLMResource` and implement `_run` and `model_id`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import dagster as dg
from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import (
    STRUCTURED_OUTPUT_REJECTED,
    ChatRequest,
    ChoiceTask,
    Completion,
    UNKNOWN_LABEL,
    UsageStats,
    cache_key,
)
from iimed_assets.core.spend import GUARD_CHARS_PER_TOKEN, CharsPerToken, Prices, TokenCounter, affordable
from iimed_assets.resources.llm.budget import StageBudget, caps_of
from iimed_assets.resources.llm.cache import RequestCache

Log = Callable[[str], None]


@dataclass
class WorkItem:
    """The samples of one request that are not in the cache yet."""

    index: int
    request: ChatRequest
    sample_indices: list[int]


OnDone = Callable[[int, int, Completion], None]


@dataclass
class Answers:
    """One completion per request of a constrained task, and whether each was generated under the schema
    (`structured`: parse it as JSON) or as free text (parse it with the text parsers)."""

    completions: list[Completion]
    structured: list[bool]
    stats: UsageStats


@dataclass
class LabelResult:
    labels: list[str]
    answers: list[str]            # what the classifier said (or why it said nothing), for the UI
    stats: UsageStats = field(default_factory=UsageStats)
    structured: int = 0           # answers generated under the label schema


class RoleResource(dg.ConfigurableResource):
    """A model that fills a recipe role (generator, classifier, judge)."""

    usd_per_1m_prompt_tokens: float = Field(default=0.0, description="price for the cost estimate")
    usd_per_1m_completion_tokens: float = Field(default=0.0, description="price for the cost estimate")
    max_usd_stage: float | None = Field(
        default=None, description="hard cap in USD on what one stage (asset partition) may spend with this role; "
                                  "None: no cap (env IIMED_MAX_USD_STAGE / IIMED_<ROLE>_MAX_USD_STAGE)")
    max_usd_run: float | None = Field(
        default=None, description="hard cap in USD on what one run may spend on LLM calls, all roles together; "
                                  "None: no cap (env IIMED_MAX_USD_RUN / IIMED_<ROLE>_MAX_USD_RUN)")

    @property
    def model_id(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def backend(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the UI shows about this role: backend, model and the settings that change answers (never a key)."""
        return {"backend": self.backend, "model": self.model_id}

    def label(self, texts: Sequence[str], task: ChoiceTask, *, max_tokens: int = 16, temperature: float = 0.0,
              seed: int = 0, cache: Any | None = None, log: Log | None = None,
              budget: StageBudget | None = None) -> LabelResult:
        raise NotImplementedError  # pragma: no cover - abstract

    def prices(self) -> Prices:
        """What this role pays per 1M tokens (the Batch backend: its batch discount applied)."""
        return Prices(self.usd_per_1m_prompt_tokens, self.usd_per_1m_completion_tokens)

    def cost(self, stats: UsageStats) -> float:
        return self.prices().cost(stats.prompt_tokens, stats.completion_tokens)

    def token_counter(self) -> TokenCounter:
        """Counts a request's input tokens for the spend plan: the model's own tokenizer where one is available
        offline (llama.cpp: the GGUF's), else the stated chars-per-token estimate."""
        return CharsPerToken()


class LLMResource(RoleResource):
    """Shared config and the cache/accounting loop; subclasses implement `_run`, `model_id` and `backend`."""

    max_tokens: int | None = Field(
        default=None, description="this role's token budget for every request (e.g. room for a reasoning model's "
                                   "thinking); None: each stage's own budget")
    structured_outputs: bool = Field(
        default=True, description="constrain labels, scores and verdicts with the backend's structured outputs "
                                  "(a server that rejects them is detected once and gets free text + parsers)")
    cache_flush_every: int = Field(default=64, description="completions per cache write (DuckDB has one writer); "
                                                           "each is journaled on disk as it arrives")
    max_attempts: int = Field(default=3, description="an empty or failed sample is asked again by later runs until "
                                                     "it was tried this many times (timeouts, 5xx and 429 never "
                                                     "count); then it is final")
    send_batch: int = Field(default=4096, description="samples claimed and sent per batch (at least 8 rounds of the "
                                                      "backend's concurrency): a concurrent run of the same "
                                                      "partition takes the next batch")
    claim_lease_s: float = Field(default=120.0, description="a concurrent run takes over this run's claimed samples "
                                                           "when its heartbeat is older than this")
    claim_poll_s: float = Field(default=2.0, description="how often a run waiting for a concurrent run's answers "
                                                         "looks for them")
    progress_every_s: float = Field(default=15.0, description="seconds between progress lines in the run log")

    _structured_rejected: bool = PrivateAttr(default=False)

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_tokens": self.max_tokens or "per stage",
                "structured_outputs": self.uses_structured_outputs()}

    def budget(self, stage_default: int) -> int:
        return self.max_tokens or stage_default

    def uses_structured_outputs(self) -> bool:
        return self.structured_outputs and not self._structured_rejected

    # ---- the shared loop ------------------------------------------------------------------------

    def parallel_requests(self) -> int:
        """Requests the backend runs at once (sizes the batches)."""
        return 1

    def rows_per_call(self, configured: int) -> int:
        """Rows a stage hands one `generate` call (its `batch_rows`); a backend whose calls take hours asks for
        more, so the calls are few."""
        return configured

    @property
    def budget_chunk(self) -> int:
        """Requests sent between two budget checks when a cap is set (without a cap the work is one chunk)."""
        return 64

    def generate(self, requests: Sequence[ChatRequest], *, cache: Any | None = None,
                 log: Log | None = None, budget: StageBudget | None = None) -> tuple[list[list[Completion]], UsageStats]:
        """Answer every request with `n` completions, from the cache where possible.

        `cache` is a Warehouse (anything with `connect()` and `database`); None disables caching. `budget`: the
        stage's spend caps (see budget.py); without one, this role's own caps apply to this call alone.

        Samples are sent in batches: each batch is claimed first (a concurrent run of the same partition waits for
        it instead of paying for it again), every finished sample is journaled at once (a kill -9 loses only what
        is in flight) and the batch is in the cache before the next one is sent. An empty or failed sample stored
        by an earlier run is asked again, up to `max_attempts` tries.
        """
        started = time.perf_counter()
        stats = UsageStats()
        model = self.model_id
        store = RequestCache.open(cache, model, self.cache_flush_every, self.max_attempts)
        stats.recovered = store.recovered
        keys = [[cache_key(model, r, i) for i in range(r.n)] for r in requests]
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        positions: dict[str, list[tuple[int, int]]] = {}
        for ri, ks in enumerate(keys):
            for si, key in enumerate(ks):
                positions.setdefault(key, []).append((ri, si))
        found = store.lookup(positions)
        known = {key: c.attempts for key, c in found.items()}  # attempts stored so far, per key
        todo: list[str] = []
        for key, where in positions.items():
            c = found.get(key)
            if c is not None and c.settled(self.max_attempts):
                for ri, si in where:
                    results[ri][si] = c
            else:
                todo.append(key)
        stats.samples = sum(r.n for r in requests)
        stats.asked_again = sum(1 for key in todo if key in known)
        if log:
            log(f"LLM {model}: {stats.samples} samples asked, {stats.samples - sum(len(positions[k]) for k in todo)} "
                f"from cache, {len(todo)} to generate" +
                (f" ({stats.asked_again} empty or failed before: asked again)" if stats.asked_again else "") +
                (f"; {stats.recovered} recovered from a killed run's journal" if stats.recovered else ""))

        lock = threading.Lock()
        done = [0]
        last_log = [time.perf_counter()]
        total = len(todo)

        def fill(key: str, completion: Completion) -> None:
            for ri, si in positions[key]:
                results[ri][si] = completion

        def on_done(ri: int, si: int, completion: Completion) -> None:
            with lock:
                key = keys[ri][si]
                completion.attempts = known.get(key, 0) + 1
                fill(key, completion)
                done[0] += 1
                store.record(key, completion)
                if completion.ok:
                    stats.prompt_tokens += completion.prompt_tokens
                    stats.completion_tokens += completion.completion_tokens
                now = time.perf_counter()
                if log and now - last_log[0] >= self.progress_every_s:
                    last_log[0] = now
                    log(self._progress_line(done[0], total, now - started, stats))

        if budget is None and caps_of(self).active:
            budget = StageBudget(f"{model} call", caps_of(self))
        try:
            with store.claims(self.claim_lease_s) as claims:
                self._work_through(todo, keys, positions, requests, known, store, claims, on_done, fill, lock, stats,
                                   log, budget)
        finally:
            with lock:
                store.close()
        out: list[list[Completion]] = []
        # Token totals were added as samples finished; count the rest from the final results. Identical samples
        # (one cache key at several positions) were sent once: the repeats count as cache hits, not as paid tokens.
        stats.prompt_tokens = stats.completion_tokens = 0
        counted: set[str] = set()
        for ri, row in enumerate(results):
            filled = [c if c is not None else Completion.failed("not generated") for c in row]
            for si, c in enumerate(filled):
                key = keys[ri][si]
                if key in counted and c.ok and not c.cached:
                    stats.finish_reasons[c.finish_reason] = stats.finish_reasons.get(c.finish_reason, 0) + 1
                    stats.cache_hits += 1
                else:
                    stats.add_completion(c)
                counted.add(key)
            out.append(filled)
        stats.wall_s = time.perf_counter() - started
        if log:
            log(self._progress_line(total, total, stats.wall_s, stats) + f"; failures {stats.failures}, "
                f"retries {stats.retries}, cache hits {stats.cache_hits}" +
                (f", {stats.from_other_runs} answered by a concurrent run" if stats.from_other_runs else ""))
        return out, stats

    def _work_through(self, todo: list[str], keys, positions, requests, known: dict[str, int], store: RequestCache,
                      claims, on_done: OnDone, fill, lock: threading.Lock, stats: UsageStats, log: Log | None,
                      budget: StageBudget | None) -> None:
        """Send `todo` batch by batch: claim, send (within the budget), make durable; await what a concurrent run
        holds."""
        pending = list(todo)
        waiting: list[str] = []  # keys another live run claimed: answered there, read from the cache here
        last_look = 0.0
        # big enough that the barrier at the end of a batch (its slowest request) costs little throughput
        size = max(self.send_batch, 8 * self.parallel_requests() * max((r.n for r in requests), default=1))
        while pending or waiting:
            if pending:
                batch, pending = pending[:size], pending[size:]
                batch = self._not_answered_elsewhere(batch, known, store, fill, stats)
                mine, theirs = claims.claim(batch)
                waiting.extend(theirs)
                work: dict[int, WorkItem] = {}
                for key in mine:
                    ri, si = positions[key][0]  # one request per key, whatever the duplicates
                    work.setdefault(ri, WorkItem(ri, requests[ri], [])).sample_indices.append(si)
                if work:
                    items = sorted(work.values(), key=lambda w: w.index)
                    if budget is not None and budget.active:
                        self._run_budgeted(items, on_done, stats, budget, log)
                    else:
                        self._run(items, on_done, stats)
                    with lock:
                        store.flush()  # in the cache before the next batch is sent
                    claims.release(mine)
            if waiting and (not pending or time.monotonic() - last_look > self.claim_poll_s):
                last_look = time.monotonic()
                stats.recovered += store.recover_journals()
                left = self._not_answered_elsewhere(waiting, known, store, fill, stats)
                mine, waiting = claims.claim(left)  # what nobody alive holds any more is ours to send
                pending.extend(mine)
                if waiting and not pending:
                    if log:
                        log(f"LLM {self.model_id}: waiting for {len(waiting)} samples a concurrent run is answering")
                    time.sleep(self.claim_poll_s)

    def _not_answered_elsewhere(self, batch: list[str], known: dict[str, int], store: RequestCache, fill,
                                stats: UsageStats) -> list[str]:
        """The keys of `batch` that nobody answered since this call looked (another run may have)."""
        found = store.lookup(batch)
        left = []
        for key in batch:
            c = found.get(key)
            if c is not None and c.attempts > known.get(key, 0):  # a newer attempt than the one we saw: theirs
                fill(key, c)
                stats.from_other_runs += 1
            else:
                left.append(key)
        return left

    def _run_budgeted(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats, budget: StageBudget,
                      log: Log | None) -> None:
        """`_run` chunk by chunk, each chunk only as much of the work as the caps leave room for at its ceiling
        cost; raises BudgetExceeded (after the finished samples are recorded) when not one request fits."""
        prices = self.prices()
        guard = CharsPerToken(GUARD_CHARS_PER_TOKEN)
        ceilings = [prices.cost(guard.count(w.request.messages) * len(w.sample_indices),
                                self.budget(w.request.max_tokens) * len(w.sample_indices)) for w in work]
        start = 0
        while start < len(work):
            chunk = ceilings[start:start + self.budget_chunk]
            fits = affordable(chunk, budget.remaining())
            if fits == 0:
                left = sum(len(w.sample_indices) for w in work[start:])
                raise budget.exceeded(chunk[0], left)
            before = (stats.prompt_tokens, stats.completion_tokens)
            self._run(work[start:start + fits], on_done, stats)
            prompt, completion = stats.prompt_tokens - before[0], stats.completion_tokens - before[1]
            budget.record(self.model_id, prompt, completion, prices.cost(prompt, completion),
                          sum(len(w.sample_indices) for w in work[start:start + fits]))
            start += fits
            if log and start < len(work):
                log(f"LLM {self.model_id}: budget: {budget.stage} spent ${budget.stage_spent:.4f}, "
                    f"${budget.remaining():.4f} left under its cap")

    def ask(self, build: Callable[[bool], Sequence[ChatRequest]], *, cache: Any | None = None,
            log: Log | None = None, budget: StageBudget | None = None) -> Answers:
        """A constrained task, one completion per request: `build(structured)` renders the requests for
        structured outputs (each carries its OutputSpec) or for free text. When the server rejects the schema,
        that is remembered for this resource and the rejected requests are asked again as free text."""
        structured = self.uses_structured_outputs()
        requests = list(build(structured))
        results, stats = self.generate(requests, cache=cache, log=log, budget=budget)
        completions = [r[0] for r in results]
        modes = [structured] * len(requests)
        rejected = [i for i, c in enumerate(completions) if structured and c.error
                    and c.error.startswith(STRUCTURED_OUTPUT_REJECTED)]
        if rejected:
            self._structured_rejected = True
            if log:
                log(f"LLM {self.model_id}: the server rejected structured outputs ({completions[rejected[0]].error}); "
                    f"asking {len(rejected)} requests again as free text, and free text from now on")
            text_requests = list(build(False))
            again, more = self.generate([text_requests[i] for i in rejected], cache=cache, log=log, budget=budget)
            stats.drop_failures(len(rejected))
            stats.merge(more)
            for i, (c,) in zip(rejected, again):
                completions[i], modes[i] = c, False
        return Answers(completions, modes, stats)

    def label(self, texts: Sequence[str], task: ChoiceTask, *, max_tokens: int = 16, temperature: float = 0.0,
              seed: int = 0, cache: Any | None = None, log: Log | None = None,
              budget: StageBudget | None = None) -> LabelResult:
        """Classify each text into one of the task's labels (an LLM vote, constrained to the label list)."""
        def build(structured: bool) -> list[ChatRequest]:
            return self.label_requests(texts, task, structured, max_tokens=max_tokens, temperature=temperature,
                                       seed=seed)

        answers = self.ask(build, cache=cache, log=log, budget=budget) if texts else Answers([], [], UsageStats())
        labels = [task.parse(c.text, s) if c.ok else UNKNOWN_LABEL for c, s in zip(answers.completions,
                                                                                   answers.structured)]
        said = [c.text[:200] if c.ok else f"error: {c.error}" for c in answers.completions]
        return LabelResult(labels, said, answers.stats, sum(answers.structured))

    def label_requests(self, texts: Sequence[str], task: ChoiceTask, structured: bool, *, max_tokens: int = 16,
                       temperature: float = 0.0, seed: int = 0) -> list[ChatRequest]:
        """The requests `label` sends (the spend plan counts them)."""
        return [ChatRequest.of(task.render(t, structured), n=1, temperature=temperature,
                               max_tokens=self.budget(max_tokens), seed=seed,
                               output=task.spec if structured else None) for t in texts]

    def _progress_line(self, done: int, total: int, elapsed: float, stats: UsageStats) -> str:
        if not total:
            return f"LLM {self.model_id}: nothing to do"
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        spent = self.cost(stats)
        projected = spent * total / done if done else 0.0
        return (f"LLM {self.model_id}: {done}/{total} samples ({done / total:.0%}), {rate:.2f} samples/s, "
                f"ETA {eta:,.0f}s, tokens in/out {stats.prompt_tokens:,}/{stats.completion_tokens:,}, "
                f"cost ${spent:.4f} (projected ${projected:.4f})")


def usage_metadata(stats: UsageStats | None, role: RoleResource, prefix: str) -> dict[str, Any]:
    """What every model stage puts in its materialization metadata, under the role's name (`generator/…`,
    `classifier/…`, `judge/…`): which model, its settings, and what it cost."""
    md: dict[str, Any] = {f"{prefix}/model": role.model_id, f"{prefix}/role": dg.MetadataValue.json(role.describe())}
    if stats is None:
        return md
    return {
        **md,
        f"{prefix}/requests": stats.requests,
        f"{prefix}/samples": stats.samples,
        f"{prefix}/cache_hits": stats.cache_hits,
        f"{prefix}/failures": stats.failures,
        f"{prefix}/retries": stats.retries,
        f"{prefix}/asked_again": stats.asked_again,
        f"{prefix}/from_other_runs": stats.from_other_runs,
        f"{prefix}/recovered_from_journal": stats.recovered,
        f"{prefix}/prompt_tokens": stats.prompt_tokens,
        f"{prefix}/completion_tokens": stats.completion_tokens,
        f"{prefix}/wall_s": round(stats.wall_s, 2),
        f"{prefix}/cost_usd": round(role.cost(stats), 6),
        f"{prefix}/finish_reasons": dg.MetadataValue.json(stats.finish_reasons),
    }
