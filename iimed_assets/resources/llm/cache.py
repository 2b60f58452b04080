"""The request cache: every completion, by request key, in the warehouse's `llm_cache` table; a journal that makes
each finished sample durable the moment it arrives; and claims that let concurrent runs share the work.

    cache = RequestCache.open(warehouse, model_id)      # None -> a cache that stores nothing
    found = cache.lookup(keys)                          # {key: Completion(cached=True, attempts=…)}
    with cache.claims() as claims:                      # concurrent runs of one partition share the work
        mine, theirs = claims.claim(keys)               # keys to send now / keys another live run is answering
        cache.record(key, completion)                   # journaled at once; in the table every `flush_every`
        cache.flush()                                   # before the next batch is sent (and at the end)

What is final (`Completion.settled`): an answer, or an empty / failed one after `max_attempts` tries (a transient
failure — timeout, connection, 5xx, 429 — never counts). Everything else is stored with its attempt count and
asked again by the next run, so a server that answered empty and then recovered is asked again; `attempts`
reaches the ledger.

Durability: `record` appends the completion to this process's journal file (`llm_journal/` beside the warehouse)
before anything else is sent, so a kill -9 loses only the requests in flight. The journal goes into the table at
each `flush`; the next `open` on the host replays the journals of processes that are gone.

Claims (`llm_claims`, `llm_claim_owners`): a run claims the keys it is about to send; keys another live run holds
are not sent again but awaited (they appear in the table when that run flushes). An owner is alive while its
heartbeat (a thread, every lease/3) is fresher than the lease and, on this host, its pid runs; a dead owner's
claims are taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from iimed_assets.core.llm import Completion

CACHE_TABLE = "llm_cache"
CLAIMS_TABLE = "llm_claims"
OWNERS_TABLE = "llm_claim_owners"
CACHE_DDL = (f"CREATE TABLE IF NOT EXISTS {CACHE_TABLE} (key VARCHAR PRIMARY KEY, model VARCHAR, text VARCHAR, "
             "finish_reason VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, "
             "created_at TIMESTAMP DEFAULT current_timestamp)")
# Columns added by issue 21 (an older table gets them on first use; its rows count as one attempt).
_MIGRATIONS = (f"ALTER TABLE {CACHE_TABLE} ADD COLUMN IF NOT EXISTS attempts INTEGER DEFAULT 1",
               f"ALTER TABLE {CACHE_TABLE} ADD COLUMN IF NOT EXISTS error VARCHAR",
               f"ALTER TABLE {CACHE_TABLE} ADD COLUMN IF NOT EXISTS transient BOOLEAN DEFAULT false")
_CLAIMS_DDL = (f"CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (key VARCHAR PRIMARY KEY, owner VARCHAR, "
               "claimed_at TIMESTAMP DEFAULT current_timestamp)",
               f"CREATE TABLE IF NOT EXISTS {OWNERS_TABLE} (owner VARCHAR PRIMARY KEY, host VARCHAR, pid INTEGER, "
               "heartbeat_at TIMESTAMP)")
_UNSETTLED = "(finish_reason IN ('empty', 'error'))"
_LOOKUP_CHUNK = 20_000
JOURNAL_DIR = "llm_journal"
_COLUMNS = ("key", "model", "text", "finish_reason", "prompt_tokens", "completion_tokens", "attempts", "error",
            "transient")


def _utf8(text: str | None) -> str | None:
    """Text Arrow can write: a lone surrogate in a server's answer (a broken "\\ud800" escape) becomes U+FFFD."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RequestCache:
    """Completions by request key (see `core.llm.cache_key`), stored in a DuckDB warehouse.

    `store` is anything with `connect()` returning a DuckDB connection context and a `database` path (the
    Warehouse resource). Not thread-safe on its own: the generation loop calls `record` under its lock.
    """

    def __init__(self, store: Any, model_id: str, flush_every: int = 64, max_attempts: int = 3):
        self.store = store
        self.model_id = model_id
        self.flush_every = max(1, flush_every)
        self.max_attempts = max(1, max_attempts)
        self._pending: list[tuple[str, Completion]] = []
        self.written = 0
        self.recovered = 0
        self._journal_path: Path | None = None
        self._journal: Any = None
        self._ready = False

    @staticmethod
    def open(store: Any | None, model_id: str, flush_every: int = 64, max_attempts: int = 3) -> "RequestCache":
        if store is None:
            return NullCache(model_id)
        cache = RequestCache(store, model_id, flush_every, max_attempts)
        cache.recovered = cache.recover_journals()
        return cache

    # ---- the table ---------------------------------------------------------------------------------------------

    def _schema(self, con: Any) -> None:
        if self._ready:
            return
        con.execute(CACHE_DDL)
        for sql in _MIGRATIONS:
            con.execute(sql)
        self._ready = True

    def lookup(self, keys: Iterable[str]) -> dict[str, Completion]:
        """Every stored completion of `keys` (settled or not: the caller asks `settled(max_attempts)`)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        if not keys:
            return found
        with self.store.connect() as con:
            self._schema(con)
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                rows = con.execute(
                    f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens, coalesce(attempts, 1), error, "
                    f"coalesce(transient, false) FROM {CACHE_TABLE} WHERE key IN (SELECT unnest(?::VARCHAR[]))",
                    [keys[start:start + _LOOKUP_CHUNK]]).fetchall()
                for key, text, finish, pt, ct, attempts, error, transient in rows:
                    found[key] = Completion(text or "", finish, pt or 0, ct or 0, error=error, cached=True,
                                            attempts=attempts, transient=transient)
        return found

    def record(self, key: str, completion: Completion) -> None:
        """Keep a completion: journaled at once (durable against a kill), in the table at the next flush."""
        if not self.cacheable(completion):
            return
        self._journal_write(key, completion)
        self._pending.append((key, completion))
        if len(self._pending) >= self.flush_every:
            self.flush()

    @staticmethod
    def cacheable(completion: Completion) -> bool:
        """Every completion a request produced is kept (an answer, an empty answer, a failure with its attempt
        count), except what says nothing about the request: a sample never sent, or a server that refused the
        structured-output schema (the loop asks again as free text)."""
        from iimed_assets.core.llm import STRUCTURED_OUTPUT_REJECTED

        error = completion.error or ""
        return not (error.startswith("not generated") or error.startswith("not sent")
                    or error.startswith(STRUCTURED_OUTPUT_REJECTED))

    def flush(self) -> None:
        """Write the pending completions to the table, then empty the journal. A settled row is never replaced;
        an unsettled one (empty, failed) is, by the newer attempt."""
        if not self._pending:
            return
        items, self._pending = self._pending, []
        self._insert([self._row(k, c) for k, c in items])
        self.written += len(items)
        self._journal_reset()

    def _row(self, key: str, c: Completion) -> dict[str, Any]:
        return {"key": key, "model": self.model_id, "text": _utf8(c.text), "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "attempts": c.attempts,
                "error": c.error, "transient": c.transient}

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        if not rows:
            return
        last = {r["key"]: r for r in rows}  # a key retried within one batch: its latest attempt
        table = pa.Table.from_pylist(list(last.values()), schema=pa.schema([
            ("key", pa.string()), ("model", pa.string()), ("text", pa.string()), ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()), ("attempts", pa.int32()),
            ("error", pa.string()), ("transient", pa.bool_())]))
        cols = ", ".join(_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "key")
        with self.store.connect() as con:
            self._schema(con)
            con.register("_new_cache_rows", table)
            con.execute(f"INSERT INTO {CACHE_TABLE} ({cols}) SELECT {cols} FROM _new_cache_rows "
                        f"ON CONFLICT (key) DO UPDATE SET {updates}, created_at = now() "
                        f"WHERE {CACHE_TABLE}.finish_reason IN ('empty', 'error')")
            con.unregister("_new_cache_rows")

    # ---- the journal -------------------------------------------------------------------------------------------

    def _journal_dir(self) -> Path:
        path = Path(self.store.database).parent / JOURNAL_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _journal_write(self, key: str, c: Completion) -> None:
        if self._journal is None:
            self._journal_path = self._journal_dir() / (
                f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}.jsonl")
            self._journal = open(self._journal_path, "a", encoding="utf-8")
        # one line per completion, handed to the OS at once: a killed process loses none of it
        self._journal.write(json.dumps(self._row(key, c)) + "\n")
        self._journal.flush()

    def _journal_reset(self) -> None:
        if self._journal is not None:
            self._journal.seek(0)
            self._journal.truncate()
            self._journal.flush()

    def close(self) -> None:
        """Flush, then remove this run's journal."""
        try:
            self.flush()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
                if self._journal_path is not None:
                    self._journal_path.unlink(missing_ok=True)

    def recover_journals(self, max_age_s: float = 86_400.0) -> int:
        """Replay the journals of processes that are gone (killed mid-run): on this host, their pid no longer
        runs; from another host, untouched for `max_age_s`. Returns the completions recovered."""
        folder = Path(self.store.database).parent / JOURNAL_DIR
        if not folder.is_dir():
            return 0
        here, recovered = socket.gethostname(), 0
        for path in sorted(folder.glob("*.jsonl")):
            host, _, rest = path.name.partition("~")
            pid = rest.partition("~")[0]
            try:
                dead = (not _pid_alive(int(pid))) if host == here and pid.isdigit() else \
                    time.time() - path.stat().st_mtime > max_age_s
            except (OSError, ValueError):
                continue
            if not dead:
                continue
            claimed = path.with_suffix(f".replaying-{os.getpid()}")
            try:
                path.rename(claimed)  # one process replays it
            except OSError:
                continue
            rows = []
            with open(claimed, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # the line being written when the process died
                        continue
            self._insert(rows)
            claimed.unlink(missing_ok=True)
            recovered += len(rows)
        return recovered

    # ---- claims ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claims(self, lease_s: float = 120.0) -> Iterator["Claims"]:
        """Claims for one generation call: held (heartbeat) until the block ends, then released."""
        claims = Claims(self, lease_s)
        try:
            yield claims
        finally:
            claims.release()


class Claims:
    """One run's claims on request keys (see the module docstring)."""

    def __init__(self, cache: RequestCache, lease_s: float):
        self.cache, self.lease_s = cache, lease_s
        self.owner = f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lock = threading.Lock()  # the heartbeat and the claims never write the owner row at once
        self._registered = False

    def _connect(self):
        return self.cache.store.connect()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self._lock, self._connect() as con:
                    con.execute(f"UPDATE {OWNERS_TABLE} SET heartbeat_at = current_timestamp WHERE owner = ?",
                                [self.owner])
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease; the next one retries
                pass

    def claim(self, keys: list[str]) -> tuple[list[str], list[str]]:
        """(keys claimed now by this run, keys another live run holds). Claims of dead owners are taken over."""
        if not keys:
            return [], []
        here = socket.gethostname()
        with self._lock, self._connect() as con:
            self._registered = True
            for sql in _CLAIMS_DDL:
                con.execute(sql)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"INSERT INTO {OWNERS_TABLE} VALUES (?, ?, ?, current_timestamp) ON CONFLICT (owner) "
                            "DO UPDATE SET heartbeat_at = excluded.heartbeat_at", [self.owner, here, os.getpid()])
                owners = con.execute(f"SELECT owner, host, pid, epoch(current_timestamp::TIMESTAMP - heartbeat_at) "
                                     f"FROM {OWNERS_TABLE}").fetchall()
                dead = [o for o, host, pid, age in owners if o != self.owner and
                        (age > self.lease_s or (host == here and not _pid_alive(pid)))]
                if dead:
                    con.execute(f"DELETE FROM {CLAIMS_TABLE} WHERE owner IN (SELECT unnest(?::VARCHAR[]))", [dead])
                    con.execute(f"DELETE FROM {OWNERS_TABLE} WHERE owner IN (SELECT unnest(?::VARCHAR[]))", [dead])
                con.execute(f"INSERT INTO {CLAIMS_TABLE} (key, owner) SELECT unnest(?::VARCHAR[]), ? "
                            "ON CONFLICT (key) DO NOTHING", [keys, self.owner])
                holders = dict(con.execute(f"SELECT key, owner FROM {CLAIMS_TABLE} WHERE key IN "
                                           "(SELECT unnest(?::VARCHAR[]))", [keys]).fetchall())
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        mine = [k for k in keys if holders.get(k) == self.owner]
        self.held.update(mine)
        if mine and self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name="llm-claims-heartbeat", daemon=True)
            self._beat.start()
        return mine, [k for k in keys if holders.get(k) != self.owner]

    def release(self, keys: Iterable[str] | None = None) -> None:
        """Give up claims (all of them by default: the end of the call)."""
        drop = list(self.held if keys is None else set(keys) & self.held)
        if keys is None:
            self._stop.set()
        if not self._registered or (not drop and keys is not None):
            return
        with contextlib.suppress(Exception):  # a claim left behind dies with its owner's lease
            with self._lock, self._connect() as con:
                if drop:
                    con.execute(f"DELETE FROM {CLAIMS_TABLE} WHERE owner = ? AND key IN (SELECT unnest(?::VARCHAR[]))",
                                [self.owner, drop])
                if keys is None:
                    con.execute(f"DELETE FROM {OWNERS_TABLE} WHERE owner = ?", [self.owner])
        self.held.difference_update(drop)


class NullCache(RequestCache):
    """No store: nothing is found, nothing is kept, nothing is claimed (tests, benchmarks, one-off calls)."""

    def __init__(self, model_id: str):
        super().__init__(None, model_id)

    def lookup(self, keys: Iterable[str]) -> dict[str, Completion]:
        return {}

    def record(self, key: str, completion: Completion) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def recover_journals(self, max_age_s: float = 86_400.0) -> int:
        return 0

    @contextlib.contextmanager
    def claims(self, lease_s: float = 120.0) -> Iterator["Claims"]:
        yield _NoClaims()


class _NoClaims:
    def claim(self, keys: list[str]) -> tuple[list[str], list[str]]:
        return list(keys), []

    def release(self, keys: Iterable[str] | None = None) -> None:
        pass
