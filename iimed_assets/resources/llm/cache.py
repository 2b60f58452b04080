"""The request cache: every finished completion, by request key, in the warehouse's `llm_cache` table.

    cache = RequestCache.open(warehouse, model_id)      # None -> a cache that stores nothing
    hits = cache.lookup(keys)                           # {key: Completion(cached=True)}
    cache.record(key, completion)                       # buffered; written every `flush_every` records
    cache.flush()                                       # at the end of a batch (and on errors)

One class owns the table, its schema and the policy of what is cached, so the work that issues 19 and 21
plan has one place to go:
  - durable writes before the next batch is sent: `flush()` is already called by the generation loop at the
    end of every `generate` call; a stricter policy lowers `flush_every` (1 = write through);
  - a claim/lease on request keys for concurrent runs: a `claim(keys, owner, ttl)` next to `lookup` that
    inserts lease rows (a second table keyed like this one), so two runs never pay for the same key;
  - retry-bounded caching of empty/failed answers: `cacheable()` is the one policy switch; an `attempts`
    column (added by `_migrate`) would let it cache a failure after N tries;
  - a budget cap / spend plan / batch backend: `lookup` tells the caller what is left to pay for before
    anything is sent (`LLMResource.generate` logs it), which is what a budget check or a batch submission
    needs.
"""

from __future__ import annotations

from typing import Any, Iterable

from iimed_assets.core.llm import Completion

CACHE_TABLE = "llm_cache"
CACHE_DDL = (f"CREATE TABLE IF NOT EXISTS {CACHE_TABLE} (key VARCHAR PRIMARY KEY, model VARCHAR, text VARCHAR, "
             "finish_reason VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, "
             "created_at TIMESTAMP DEFAULT current_timestamp)")
_LOOKUP_CHUNK = 20_000


class RequestCache:
    """Finished completions by request key (see `core.llm.cache_key`), stored in a DuckDB warehouse.

    `store` is anything with `connect()` returning a DuckDB connection context (the Warehouse resource).
    Not thread-safe on its own: the generation loop calls `record` under its lock.
    """

    def __init__(self, store: Any, model_id: str, flush_every: int = 64):
        self.store = store
        self.model_id = model_id
        self.flush_every = max(1, flush_every)
        self._pending: list[tuple[str, Completion]] = []
        self.written = 0

    @staticmethod
    def open(store: Any | None, model_id: str, flush_every: int = 64) -> "RequestCache":
        return RequestCache(store, model_id, flush_every) if store is not None else NullCache(model_id)

    @staticmethod
    def cacheable(completion: Completion) -> bool:
        """What is stored: every answer that came back, including empty and truncated ones (they are what the
        model said); never a failure (a rerun asks again)."""
        return completion.ok

    def lookup(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        if not keys:
            return found
        with self.store.connect() as con:
            con.execute(CACHE_DDL)
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                rows = con.execute(
                    f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM {CACHE_TABLE} "
                    "WHERE key IN (SELECT unnest(?::VARCHAR[]))", [keys[start:start + _LOOKUP_CHUNK]]).fetchall()
                for key, text, finish, pt, ct in rows:
                    found[key] = Completion(text, finish, pt, ct, cached=True)
        return found

    def record(self, key: str, completion: Completion) -> None:
        if not self.cacheable(completion):
            return
        self._pending.append((key, completion))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        import pyarrow as pa

        items, self._pending = self._pending, []
        table = pa.table({
            "key": [k for k, _ in items], "model": [self.model_id] * len(items), "text": [c.text for _, c in items],
            "finish_reason": [c.finish_reason for _, c in items],
            "prompt_tokens": pa.array([c.prompt_tokens for _, c in items], pa.int32()),
            "completion_tokens": pa.array([c.completion_tokens for _, c in items], pa.int32()),
        })
        with self.store.connect() as con:
            con.execute(CACHE_DDL)
            con.register("_new_cache_rows", table)
            con.execute(f"INSERT OR IGNORE INTO {CACHE_TABLE} (key, model, text, finish_reason, prompt_tokens, "
                        "completion_tokens) SELECT * FROM _new_cache_rows")
            con.unregister("_new_cache_rows")
        self.written += len(items)


class NullCache(RequestCache):
    """No store: nothing is found, nothing is kept (tests, benchmarks, one-off calls)."""

    def __init__(self, model_id: str):
        super().__init__(None, model_id)

    def lookup(self, keys: Iterable[str]) -> dict[str, Completion]:
        return {}

    def record(self, key: str, completion: Completion) -> None:
        pass

    def flush(self) -> None:
        pass
