"""The OpenAI Batch API behind the same LLM protocol: half price, a 24 h window (the card profile's judge).

    judge = OpenAIBatchLLM(model="gpt-4o", usd_per_1m_prompt_tokens=2.5, usd_per_1m_completion_tokens=10)
    answers = judge.ask(build, cache=warehouse, log=context.log.info)     # as any role

What one `generate` does with the samples the cache does not hold:
  1. Re-attach: every batch recorded in the warehouse (`llm_batches`, `llm_batch_requests`) that holds some of
     these requests and did not fail is polled and downloaded instead of submitted again — a killed or restarted
     run picks up its in-flight batches.
  2. Submit the rest as JSONL files within the API's limits (at most 50,000 requests and 200 MB per file; the
     platform docs, batches create), uploaded through `/v1/files` (purpose `batch`), one batch per file
     (`/v1/chat/completions`, completion_window `24h`); each batch id and its requests are written to the
     warehouse *before* polling starts.
  3. Poll every batch until it ends, logging progress (requests done, rate, ETA) to the run log.
  4. Download the output file into the request cache (the loop's `on_done`, like every backend); requests in the
     error file (a failed line) or never answered (an expired batch) are resubmitted, only they, up to
     `max_resubmits` rounds; what still fails is recorded as a failure (never cached).

A request's `custom_id` is the hash of its cache key and sample count, so the same request gets the same id in
every run (that is what lets a new run find it in a recorded batch). Cost is taken at batch prices
(`batch_discount`, 0.5). With a budget cap the loop hands this backend one file's worth of requests per check.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import ChatRequest, Completion, UsageStats, cache_key, sample_seed
from iimed_assets.core.spend import Prices
from iimed_assets.resources.llm.base import LLMResource, Log, OnDone, WorkItem
from iimed_assets.resources.llm.openai_compatible import chat_body, parse_choices

BATCHES_TABLE = "llm_batches"
BATCH_REQUESTS_TABLE = "llm_batch_requests"
BATCHES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} (batch_id VARCHAR PRIMARY KEY, model VARCHAR, base_url VARCHAR, "
    "input_file_id VARCHAR, requests INTEGER, status VARCHAR, output_file_id VARCHAR, error_file_id VARCHAR, "
    "completed INTEGER, failed INTEGER, round INTEGER, created_at TIMESTAMP DEFAULT current_timestamp, "
    "updated_at TIMESTAMP DEFAULT current_timestamp)")
BATCH_REQUESTS_DDL = (f"CREATE TABLE IF NOT EXISTS {BATCH_REQUESTS_TABLE} (custom_id VARCHAR, batch_id VARCHAR, "
                      "PRIMARY KEY (custom_id, batch_id))")
TERMINAL = ("completed", "expired", "failed", "cancelled")
# A batch that ended this way answered nothing usable: its requests are submitted again.
DEAD = ("failed", "cancelled")
# The API's limits on one input file (platform docs, batches create).
MAX_REQUESTS_PER_FILE = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass
class _Pending:
    """One request line: the work items it answers (identical requests share a line) and its body."""

    custom_id: str
    body: dict[str, Any]
    targets: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, sample indices)


class OpenAIBatchLLM(LLMResource):
    """The OpenAI Batch API (files + batches): the same protocol as the other backends, at batch prices."""

    base_url: str = Field(default="https://api.openai.com/v1", description="API URL including /v1")
    model: str = Field(description="model name, e.g. gpt-4o")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="env var holding the API key (never config)")
    batch_discount: float = Field(default=0.5, description="batch price / list price (OpenAI: 50% off)")
    max_requests_per_file: int = Field(default=MAX_REQUESTS_PER_FILE, description="the API's limit: 50,000")
    max_file_bytes: int = Field(default=MAX_FILE_BYTES - 8 * 1024 * 1024,
                                description="bytes per JSONL file (the API allows 200 MB; a margin is kept)")
    completion_window: str = Field(default="24h", description="the only window the API accepts")
    poll_interval_s: float = Field(default=60.0, description="seconds between two status polls")
    max_wait_s: float = Field(default=26 * 3600.0, description="give up waiting after this long (the batches stay "
                                                                 "recorded: a rerun re-attaches)")
    stage_rows_per_call: int = Field(default=25_000, description="rows a stage hands one call at the least (a "
                                     "call's requests go out as parallel batch files, and the call waits for them: "
                                     "a stage's 64-row default would make 1M judgements 16,000 waits)")
    max_resubmits: int = Field(default=3, description="rounds of resubmitting failed/expired requests")
    timeout_s: float = Field(default=600.0, description="per HTTP call (uploads and downloads included)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra fields for every request body")

    _log: Any = PrivateAttr(default=None)
    _store: Any = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        # the same model at the same parameters as the synchronous API: the two share cache entries
        return f"openai-compatible:{self.model}"

    @property
    def backend(self) -> str:
        return "openai_batch"

    @property
    def budget_chunk(self) -> int:
        return self.max_requests_per_file

    def parallel_requests(self) -> int:
        # the loop's claim batches: every request of a call in one (batches run for hours; none waits on another)
        return 1 << 30

    def rows_per_call(self, configured: int) -> int:
        return max(configured, self.stage_rows_per_call)

    def prices(self) -> Prices:
        return Prices(self.usd_per_1m_prompt_tokens, self.usd_per_1m_completion_tokens, self.batch_discount)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self.base_url, "api_key_env": self.api_key_env,
                "batch_discount": self.batch_discount, "completion_window": self.completion_window}

    def generate(self, requests: Sequence[ChatRequest], *, cache: Any | None = None, log: Log | None = None,
                 budget: Any | None = None):
        self._log, self._store = log, cache  # the batch table lives beside the cache, in the warehouse
        try:
            return super().generate(requests, cache=cache, log=log, budget=budget)
        finally:
            self._log = self._store = None

    # ---- the run ----------------------------------------------------------------------------------------

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                               timeout=self.timeout_s, max_retries=3)
        try:
            pending = self._lines(work)
            self._say(f"batch {self.model}: {len(pending)} request lines "
                      f"({sum(len(t[1]) for p in pending.values() for t in p.targets)} samples)")
            reasons: dict[str, str] = {}
            attached = self._recorded_batches(list(pending))
            if attached:
                self._say(f"batch {self.model}: re-attaching to {len(attached)} recorded batches: {', '.join(attached)}")
                waiting = not self._collect(client, attached, pending, on_done, stats, reasons)
            else:
                waiting = False
            for round_ in range(self.max_resubmits + 1):
                if not pending or waiting:  # batches still running: the rerun re-attaches, nothing is resubmitted
                    break
                if round_:
                    self._say(f"batch {self.model}: resubmitting {len(pending)} failed or expired requests "
                              f"(round {round_} of {self.max_resubmits})")
                ids = self._submit(client, pending, round_)
                stats.requests += len(pending)
                waiting = not self._collect(client, ids, pending, on_done, stats, reasons)
            for line in pending.values():
                why = reasons.get(line.custom_id, "no answer from the batch")
                for ri, indices in line.targets:
                    for si in indices:
                        on_done(ri, si, Completion.failed(f"batch: {why}"))
        finally:
            client.close()

    def _lines(self, work: list[WorkItem]) -> dict[str, _Pending]:
        lines: dict[str, _Pending] = {}
        for item in work:
            req = item.request
            first = item.sample_indices[0]
            n = len(item.sample_indices)
            custom_id = hashlib.sha256(f"{cache_key(self.model_id, req, first)}:{n}".encode()).hexdigest()[:40]
            if custom_id not in lines:
                lines[custom_id] = _Pending(custom_id, chat_body(self, req, n, sample_seed(req.seed, first)))
            lines[custom_id].targets.append((item.index, list(item.sample_indices)))
        return lines

    def files_for(self, pending: Sequence[_Pending]) -> list[bytes]:
        """JSONL files, each within the request-count and byte limits (a line over the byte limit alone fails
        loudly: no file could carry it)."""
        files: list[bytes] = []
        current: list[bytes] = []
        size = 0
        for p in pending:
            line = (json.dumps({"custom_id": p.custom_id, "method": "POST", "url": "/v1/chat/completions",
                                "body": p.body}, ensure_ascii=False) + "\n").encode("utf-8")
            if len(line) > self.max_file_bytes:
                raise ValueError(f"one batch request is {len(line)} bytes, over the {self.max_file_bytes} file limit")
            if current and (len(current) >= self.max_requests_per_file or size + len(line) > self.max_file_bytes):
                files.append(b"".join(current))
                current, size = [], 0
            current.append(line)
            size += len(line)
        if current:
            files.append(b"".join(current))
        return files

    def _submit(self, client: Any, pending: dict[str, _Pending], round_: int) -> list[str]:
        ids = []
        lines = list(pending.values())
        start = 0
        for data in self.files_for(lines):
            count = data.count(b"\n")
            chunk = lines[start:start + count]
            start += count
            uploaded = client.files.create(file=(f"iimed-{self.model}-{round_}.jsonl", data, "application/jsonl"),
                                           purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window=self.completion_window,
                                          metadata={"project": "iimed_assets", "model_id": self.model_id})
            self._record(batch, [p.custom_id for p in chunk], round_)
            self._say(f"batch {self.model}: submitted {batch.id} ({count} requests, {len(data) / 1e6:.1f} MB)")
            ids.append(batch.id)
        return ids

    def _collect(self, client: Any, batch_ids: list[str], pending: dict[str, _Pending], on_done: OnDone,
                 stats: UsageStats, reasons: dict[str, str]) -> bool:
        """Poll the batches until they end (progress and ETA in the log), then take their answers. False when it
        gave up waiting (`max_wait_s`) with batches still running."""
        started = time.monotonic()
        last_log = 0.0
        open_ids = list(batch_ids)
        finished: dict[str, Any] = {}
        while open_ids:
            done = total = 0
            for bid in list(open_ids):
                batch = client.batches.retrieve(bid)
                self._update(batch)
                counts = batch.request_counts
                done += (counts.completed + counts.failed) if counts else 0
                total += counts.total if counts else 0
                if batch.status in TERMINAL:
                    open_ids.remove(bid)
                    finished[bid] = batch
            elapsed = time.monotonic() - started
            if open_ids and (elapsed - last_log >= max(self.progress_every_s, self.poll_interval_s) or not last_log):
                last_log = elapsed or 1e-9
                rate = done / elapsed if elapsed > 0 else 0.0
                eta = f"{(total - done) / rate:,.0f}s" if rate > 0 else "unknown"
                self._say(f"batch {self.model}: {len(open_ids)} batches running, {done}/{total} requests done, "
                          f"{rate:.1f} requests/s, ETA {eta}")
            if open_ids:
                if elapsed > self.max_wait_s:
                    self._say(f"batch {self.model}: gave up waiting after {elapsed:,.0f}s for {', '.join(open_ids)}; "
                              "they stay recorded: a rerun re-attaches to them")
                    for bid, batch in finished.items():
                        self._take(client, batch, pending, on_done, reasons)
                    for line in pending.values():
                        reasons[line.custom_id] = "batch still running: rerun to re-attach"
                    return False
                time.sleep(self.poll_interval_s)
        for bid, batch in finished.items():
            self._take(client, batch, pending, on_done, reasons)
        return True

    def _take(self, client: Any, batch: Any, pending: dict[str, _Pending], on_done: OnDone,
              reasons: dict[str, str]) -> None:
        if batch.status in DEAD:
            why = f"batch {batch.id} {batch.status}"
            for cid in self._requests_of(batch.id):
                if cid in pending:
                    reasons[cid] = why
            return
        taken = 0
        if batch.output_file_id:
            for record in _jsonl(client.files.content(batch.output_file_id).read()):
                line = pending.get(record.get("custom_id"))
                response = record.get("response") or {}
                if line is None or response.get("status_code") != 200:
                    continue
                try:
                    n = line.body["n"]
                    completions = parse_choices(response.get("body"), n)
                except (ValueError, KeyError, TypeError) as exc:
                    reasons[line.custom_id] = f"malformed batch answer: {exc}"
                    continue
                if len(completions) < n:
                    reasons[line.custom_id] = f"{len(completions)} of {n} choices"
                    continue
                for ri, indices in line.targets:
                    for si, c in zip(indices, completions):
                        on_done(ri, si, c)
                del pending[line.custom_id]
                taken += 1
        errors = 0
        if batch.error_file_id:
            for record in _jsonl(client.files.content(batch.error_file_id).read()):
                cid = record.get("custom_id")
                if cid in pending:
                    errors += 1
                    err = record.get("error") or {}
                    resp = record.get("response") or {}
                    reasons[cid] = err.get("code") or f"status {resp.get('status_code')}"
        self._say(f"batch {self.model}: {batch.id} {batch.status}: {taken} answers into the cache, {errors} failed "
                  f"or expired")

    # ---- the warehouse record -------------------------------------------------------------------------------

    def _record(self, batch: Any, custom_ids: list[str], round_: int) -> None:
        if self._store is None:
            return
        import pyarrow as pa

        with self._store.connect() as con:
            con.execute(BATCHES_DDL)
            con.execute(BATCH_REQUESTS_DDL)
            con.execute(f"INSERT OR REPLACE INTO {BATCHES_TABLE} (batch_id, model, base_url, input_file_id, requests, "
                        "status, round) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [batch.id, self.model_id, self.base_url, batch.input_file_id, len(custom_ids), batch.status,
                         round_])
            con.register("_batch_ids", pa.table({"custom_id": custom_ids, "batch_id": [batch.id] * len(custom_ids)}))
            con.execute(f"INSERT OR IGNORE INTO {BATCH_REQUESTS_TABLE} SELECT custom_id, batch_id FROM _batch_ids")
            con.unregister("_batch_ids")

    def _update(self, batch: Any) -> None:
        if self._store is None:
            return
        counts = batch.request_counts
        with self._store.connect() as con:
            con.execute(BATCHES_DDL)
            con.execute(f"UPDATE {BATCHES_TABLE} SET status = ?, output_file_id = ?, error_file_id = ?, completed = ?, "
                        "failed = ?, updated_at = now() WHERE batch_id = ?",
                        [batch.status, batch.output_file_id, batch.error_file_id,
                         counts.completed if counts else None, counts.failed if counts else None, batch.id])

    def _recorded_batches(self, custom_ids: list[str]) -> list[str]:
        """Batches of this model and server that hold some of these requests and may still answer them."""
        if self._store is None or not custom_ids:
            return []
        with self._store.connect() as con:
            con.execute(BATCHES_DDL)
            con.execute(BATCH_REQUESTS_DDL)
            rows = con.execute(
                f"SELECT DISTINCT b.batch_id, b.created_at FROM {BATCHES_TABLE} b JOIN {BATCH_REQUESTS_TABLE} r "
                "USING (batch_id) WHERE b.model = ? AND b.base_url = ? AND coalesce(b.status, '') NOT IN "
                "(SELECT unnest(?::VARCHAR[])) AND r.custom_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY b.created_at",
                [self.model_id, self.base_url, list(DEAD), custom_ids]).fetchall()
        return [r[0] for r in rows]

    def _requests_of(self, batch_id: str) -> list[str]:
        if self._store is None:
            return []
        with self._store.connect() as con:
            con.execute(BATCH_REQUESTS_DDL)
            return [r[0] for r in con.execute(f"SELECT custom_id FROM {BATCH_REQUESTS_TABLE} WHERE batch_id = ?",
                                              [batch_id]).fetchall()]

    def _say(self, line: str) -> None:
        if self._log:
            self._log(line)


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def recorded_batches(warehouse: Any) -> list[tuple]:
    """(batch id, model, status, requests, completed, failed, round) of every recorded batch, newest first."""
    if not warehouse.table_exists(BATCHES_TABLE):
        return []
    return warehouse.fetch(f"SELECT batch_id, model, status, requests, completed, failed, round FROM {BATCHES_TABLE} "
                           "ORDER BY created_at DESC")
