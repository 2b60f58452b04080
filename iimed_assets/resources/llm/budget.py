"""The hard LLM budget cap: per stage and per run, in USD, checked before every chunk of requests is sent.

    budget = stage_budget(context, judge, warehouse)      # in an asset: this stage's caps and spend so far
    judge.ask(build, cache=warehouse, log=..., budget=budget)

The caps are the role resource's `max_usd_stage` / `max_usd_run` (launchpad), set from `IIMED_MAX_USD_STAGE` /
`IIMED_MAX_USD_RUN` (every role) or `IIMED_<ROLE>_MAX_USD_STAGE` / `_RUN` (one role). Before each chunk the
generation loop sends only the prefix of the work whose *ceiling* cost (prompt at a pessimistic 3 characters per
token, every sample at its full max_tokens, at the role's prices) fits in what is left; when not even one request
fits, the cache is flushed and the stage raises `BudgetExceeded`, a `dg.Failure` whose message names the spend,
the cap and how to resume. The staged partition is never swapped in, the failure alert sensor reports the failed
run with that message, and a rerun with a higher cap sends only the samples the cache does not hold.

Spend is recorded in the warehouse table `llm_spend` (run id, stage, model, tokens, USD) after every chunk, so
the per-run cap holds across the steps and processes of one run, and the UI's figures can be checked in SQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from iimed_assets.core.spend import SpendCaps, budget_message

SPEND_TABLE = "llm_spend"
SPEND_DDL = (f"CREATE TABLE IF NOT EXISTS {SPEND_TABLE} (run_id VARCHAR, stage VARCHAR, model VARCHAR, "
             "prompt_tokens BIGINT, completion_tokens BIGINT, usd DOUBLE, updated_at TIMESTAMP DEFAULT "
             "current_timestamp, PRIMARY KEY (run_id, stage, model))")


class BudgetExceeded(dg.Failure):
    """A stage stopped at its LLM budget cap (the message says how to resume)."""

    def __init__(self, message: str, *, stage: str, scope: str, cap: float, spent: float, done: int, left: int):
        super().__init__(description=message, allow_retries=False, metadata={
            "stage": stage, "cap_scope": scope, "cap_usd": cap, "spent_usd": round(spent, 6),
            "samples_finished": done, "samples_not_sent": left})
        self.stage, self.scope, self.cap, self.spent, self.done, self.left = stage, scope, cap, spent, done, left

    def __str__(self) -> str:
        return self.description or "LLM budget cap reached"


@dataclass
class StageBudget:
    """One stage's caps and what it (and its run) spent so far. Pass the same object to every LLM call of a
    stage: the stage cap counts all of them."""

    stage: str
    caps: SpendCaps
    run_id: str | None = None
    store: Any | None = None          # the Warehouse: run spend is shared there; None: this object only
    role: str = ""
    stage_spent: float = 0.0
    samples_done: int = 0
    _local_run_spent: float = field(default=0.0, repr=False)

    @property
    def active(self) -> bool:
        return self.caps.active

    def run_spent(self) -> float:
        """Everything the run spent so far, all stages and roles (from `llm_spend`), or this stage's spend."""
        if self.store is None or self.run_id is None:
            return self._local_run_spent
        with self.store.connect() as con:
            con.execute(SPEND_DDL)
            row = con.execute(f"SELECT coalesce(sum(usd), 0) FROM {SPEND_TABLE} WHERE run_id = ?",
                              [self.run_id]).fetchone()
        return float(row[0]) if row else 0.0

    def remaining(self) -> float:
        return self.caps.remaining(self.stage_spent, self.run_spent())

    def record(self, model: str, prompt_tokens: int, completion_tokens: int, usd: float, samples: int) -> None:
        self.stage_spent += usd
        self._local_run_spent += usd
        self.samples_done += samples
        if self.store is None or self.run_id is None or (usd == 0 and prompt_tokens == 0 and completion_tokens == 0):
            return
        with self.store.connect() as con:
            con.execute(SPEND_DDL)
            con.execute(
                f"INSERT INTO {SPEND_TABLE} (run_id, stage, model, prompt_tokens, completion_tokens, usd) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, stage, model) DO UPDATE SET "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "usd = usd + excluded.usd, updated_at = now()",
                [self.run_id, self.stage, model, prompt_tokens, completion_tokens, usd])

    def exceeded(self, next_cost: float, left: int) -> BudgetExceeded:
        run_spent = self.run_spent()
        scope, cap, spent = self.caps.binding(self.stage_spent, run_spent)
        role = self.role.upper() or "<ROLE>"
        message = budget_message(self.stage, scope, cap, spent, next_cost, self.samples_done, left,
                                 f"IIMED_MAX_USD_{scope.upper()} or IIMED_{role}_MAX_USD_{scope.upper()}")
        return BudgetExceeded(message, stage=self.stage, scope=scope, cap=cap, spent=spent, done=self.samples_done,
                              left=left)


def caps_of(role: Any) -> SpendCaps:
    return SpendCaps(getattr(role, "max_usd_stage", None), getattr(role, "max_usd_run", None))


def stage_budget(context: Any, role: Any, warehouse: Any | None, role_name: str = "") -> StageBudget:
    """The budget of the asset step in `context` for `role` (its caps; run spend shared through the warehouse)."""
    stage = context.asset_key.to_user_string()
    if context.has_partition_key:
        stage += f"[{context.partition_key}]"
    return StageBudget(stage, caps_of(role), run_id=context.run.run_id, store=warehouse, role=role_name)


def spend_by_run(warehouse: Any, run_id: str) -> list[tuple]:
    """(stage, model, prompt tokens, completion tokens, usd) recorded for a run."""
    if not warehouse.table_exists(SPEND_TABLE):
        return []
    return warehouse.fetch(f"SELECT stage, model, prompt_tokens, completion_tokens, usd FROM {SPEND_TABLE} "
                           "WHERE run_id = ? ORDER BY stage, model", [run_id])


def is_unlimited(value: float | None) -> bool:
    return value is None or math.isinf(value)
