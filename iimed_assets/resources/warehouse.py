"""The DuckDB warehouse: one file, short connections, atomic partition swaps, the row ledger.

DuckDB allows one writing process per file. Stages therefore do their slow work outside any
connection, stage their output as Parquet, and hold a connection only for short steps; a process that
finds the file locked waits with jittered exponential backoff instead of failing. That is what lets
parallel partition runs (multiprocess executor, backfills) share one file.

Every write of a stage's output goes through one helper, `Warehouse.swap`: the new rows, side tables and
ledger rows are first staged in tables of their own, the stage's blocking checks run on those staged rows,
and only when none fails does one short transaction swap them in. A failing check (or a crash) leaves the
previous rows and ledger exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import dagster as dg
import duckdb
from pydantic import Field

from iimed_assets.core.runs import ALL as ALL_PARTITIONS
from iimed_assets.core.runs import StageRun, settings_hash
from iimed_assets.core.schema import (
    LEDGER_COLUMNS_DDL,
    SAMPLE_COLUMN_NAMES,
    SAMPLE_COLUMNS_DDL,
    check_identifier,
    ddl_columns,
)

LEDGER_TABLE = "row_ledger"
DEFAULT_MEMORY_LIMIT = "2GB"
_OWNER_MARK = "@"  # staging folder names end in @<host>~<pid>~<random>


def default_warehouse_path() -> Path:
    """`data/warehouse.duckdb` in the project checkout (git-ignored), when no path is configured ($IIMED_WAREHOUSE
    becomes the configured path where the definitions are built: resources/defaults.py)."""
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / "data" / "warehouse.duckdb"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text or "in use" in text)


class WarehouseLockTimeout(RuntimeError):
    pass


@dataclass(frozen=True)
class Select:
    """A table filled from a query (`?` parameters in `params`)."""

    table: str
    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True)
class Swap:
    """One atomic replacement: an asset's table (all of it, or with `partition` the rows whose `source` is that
    partition), the side tables written with it, and the asset's ledger rows (for that partition).

    Ledger rows come from `ledger_sql` (a select of row_id, reason, detail) and/or a staged Parquet file
    (`ledger_path`), read in the same snapshot as the rows. `ddl` gives the table's columns when the select's own
    types are not enough (the sample row's NOT NULLs); `setup` statements run first on the staging connection
    (temporary tables the selects read)."""

    asset: str
    rows: Select
    partition: str | None = None
    ledger_path: Path | None = None
    ledger_sql: str | None = None
    ledger_params: Sequence[Any] = ()
    side_tables: Sequence[Select] = ()
    ddl: str | None = None
    setup: Sequence[tuple[str, Sequence[Any]]] = ()

    @classmethod
    def source_partition(cls, table: str, partition: str, rows_path: Path, ledger_path: Path) -> Swap:
        """A source partition from the loader's staged Parquet files. Duplicate ids within the staged rows keep
        their first occurrence; the others are ledgered as `duplicate_id`, with the ordinal of the row kept."""
        cols = ", ".join(SAMPLE_COLUMN_NAMES)
        # Duplicates are found on (id, ordinal) only, so the window never carries the row text; scans keep file
        # order (insertion order).
        dups = ("CREATE OR REPLACE TEMP TABLE _dup_rows AS SELECT id, _ordinal, _first FROM ("
                "SELECT id, _ordinal, row_number() OVER (PARTITION BY id ORDER BY _ordinal) AS _rank, "
                "min(_ordinal) OVER (PARTITION BY id) AS _first FROM read_parquet(?)) WHERE _rank > 1")
        return cls(
            asset=table, partition=partition, ledger_path=ledger_path, ddl=ddl_columns(SAMPLE_COLUMNS_DDL),
            setup=[(dups, [str(rows_path)])],
            rows=Select(table, f"SELECT {cols} FROM read_parquet(?) WHERE _ordinal NOT IN "
                               "(SELECT _ordinal FROM _dup_rows)", [str(rows_path)]),
            ledger_sql="SELECT id AS row_id, 'duplicate_id' AS reason, 'same id as input row ' || _first || "
                       "' (kept); this is row ' || _ordinal AS detail FROM _dup_rows ORDER BY _ordinal")


@dataclass(frozen=True)
class Staged:
    """A swap's rows while they wait for their checks: tables of their own, queried like the real ones (`table`
    holds only the swapped partition's rows; `ledger` the asset's new ledger rows, with the ledger's columns)."""

    table: str
    ledger: str
    side: Mapping[str, str] = field(default_factory=dict)  # side table -> its staged copy

    def count(self, warehouse: Warehouse) -> int:
        return int(warehouse.fetch_one(f"SELECT count(*) FROM {self.table}")[0])

    def ledger_counts(self, warehouse: Warehouse) -> dict[str, int]:
        return dict(warehouse.fetch(f"SELECT reason, count(*) FROM {self.ledger} GROUP BY 1 ORDER BY 2 DESC, 1"))


class SwapBlocked(RuntimeError):
    """A blocking check failed on the staged rows: nothing was swapped."""

    def __init__(self, asset: str, results: Sequence[Any], failed: Sequence[Any]) -> None:
        names = ", ".join(r.check_name for r in failed)
        super().__init__(f"{asset}: blocking check(s) {names} failed on the staged rows; the previous rows and "
                         "ledger are kept")
        self.results, self.failed = list(results), list(failed)


def blocking_failures(results: Sequence[Any], blocking: Collection[str]) -> list[Any]:
    """The results that stop a swap: a failed check of `blocking` at severity ERROR (a failed WARN never blocks,
    as in Dagster)."""
    return [r for r in results if r.check_name in blocking and not r.passed
            and r.severity == dg.AssetCheckSeverity.ERROR]


STAGED_SWAPS = "staged_swaps"  # staged tables not yet swapped in, with the process that staged them
STAGE_RUNS = "stage_runs"  # what produced each stage partition's rows: every record, the latest is current
STAGE_RUNS_DDL = (f"CREATE TABLE {STAGE_RUNS} (seq BIGINT, asset VARCHAR NOT NULL, partition VARCHAR NOT NULL, "
                  "run_id VARCHAR, settings_hash VARCHAR NOT NULL, params JSON, stats JSON, recorded_at TIMESTAMP)")


class Warehouse(dg.ConfigurableResource):
    """DuckDB warehouse holding every asset's table and the row ledger."""

    path: str | None = Field(
        default=None, description="DuckDB file; default $IIMED_WAREHOUSE or ./data/warehouse.duckdb")
    lock_timeout_s: float = Field(default=900.0, description="how long to wait for another writer")
    memory_limit: str | None = Field(
        default=None, description="DuckDB memory_limit (it spills beyond it); default $IIMED_DUCKDB_MEMORY_LIMIT or 2GB")
    threads: int | None = Field(default=None, description="DuckDB threads")

    @property
    def database(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_warehouse_path()

    @property
    def staging_dir(self) -> Path:
        """Where stages write their Parquet files before a swap: beside the DuckDB file, same disk."""
        path = self.database.parent / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def staging_folder(self, prefix: str) -> Iterator[Path]:
        """A folder of `staging_dir` for one stage's files, removed on every way out. Its name carries this host
        and process, so a folder left by a killed process (kill -9 skips every `finally`) is removed by the next
        stage that stages anything (`sweep_staging`)."""
        self.sweep_staging()
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{_OWNER_MARK}{socket.gethostname()}~{os.getpid()}~",
                                     dir=self.staging_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def sweep_staging(self, max_age_s: float = 86_400.0) -> list[str]:
        """Remove staging folders whose process is gone: on this host, its pid no longer runs; from another host
        (or without an owner mark: made before marks existed), untouched for `max_age_s`. Returns their names."""
        here, now, removed = socket.gethostname(), time.time(), []
        for path in self.staging_dir.iterdir():
            if not path.is_dir():
                continue
            owner = path.name.rsplit(_OWNER_MARK, 1)[1].split("~") if _OWNER_MARK in path.name else None
            if owner and len(owner) >= 3 and owner[0] == here and owner[1].isdigit():
                stale = not _pid_alive(int(owner[1]))
            else:
                try:
                    stale = now - path.stat().st_mtime > max_age_s
                except FileNotFoundError:  # removed by its owner meanwhile
                    continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits (with backoff) while another process holds the file."""
        db = self.database
        db.parent.mkdir(parents=True, exist_ok=True)
        # A bounded buffer pool keeps memory flat as tables grow; DuckDB spills to <db>.tmp beyond it.
        config: dict[str, Any] = {"memory_limit": self.memory_limit or DEFAULT_MEMORY_LIMIT}
        if self.threads:
            config["threads"] = self.threads
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(db), config=config)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    if _is_lock_error(exc):
                        raise WarehouseLockTimeout(
                            f"{db} stayed locked by another process for {self.lock_timeout_s:.0f}s") from exc
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        try:
            yield con
        finally:
            con.close()

    # ---- schema -------------------------------------------------------------------------------

    @staticmethod
    def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} ({ddl_columns(LEDGER_COLUMNS_DDL)})")

    # ---- the swap -------------------------------------------------------------------------------

    def swap(self, change: Swap, *, run_id: str | None,
             checks: Callable[[Staged], Sequence[Any]] | None = None,
             blocking: Collection[str] = ()) -> list[Any]:
        """Replace `change.rows.table` (or one partition of it), its side tables and the asset's ledger rows.

        1. stage: the selects are written to staged tables, in one transaction (one snapshot of the inputs);
        2. check: `checks(staged)` evaluates the stage's checks on the staged rows (short connections);
        3. swap: when no check in `blocking` failed at ERROR, one short transaction moves the staged rows in
           (a whole table is renamed into place; a partition replaces the old partition's rows) and replaces
           the ledger rows. Otherwise SwapBlocked is raised and the previous rows and ledger stay as they were.
        Staged tables are dropped on every way out; a killed run's are dropped by the next swap of the same
        asset and partition. Returns the check results."""
        targets = [change.rows, *change.side_tables]
        token = uuid.uuid4().hex[:12]
        staged = Staged(table=f"_staged_{token}_0", ledger=f"_staged_{token}_ledger",
                        side={t.table: f"_staged_{token}_{k}" for k, t in enumerate(targets) if k})
        names = [staged.table, *staged.side.values()]
        partition = change.partition or "all"
        try:
            self._stage(change, staged, names, token, run_id)
            results = list(checks(staged)) if checks else []
            failed = blocking_failures(results, blocking)
            if failed:
                raise SwapBlocked(change.asset, results, failed)
            with self.connect() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    for target, name in zip(targets, names):
                        self._move_in(con, change, check_identifier(target.table), name)
                    if change.partition is None:
                        con.execute(f"DELETE FROM {LEDGER_TABLE} WHERE asset = ?", [change.asset])
                    else:
                        con.execute(f"DELETE FROM {LEDGER_TABLE} WHERE asset = ? AND partition = ?",
                                    [change.asset, partition])
                    con.execute(f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                                f"SELECT asset, partition, row_id, reason, detail, run_id FROM {staged.ledger}")
                    con.execute(f"DROP TABLE {staged.ledger}")
                    con.execute(f"DELETE FROM {STAGED_SWAPS} WHERE token = ?", [token])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            return results
        finally:
            self._drop_staged(token, [*names, staged.ledger])

    def _stage(self, change: Swap, staged: Staged, names: list[str], token: str, run_id: str | None) -> None:
        partition = change.partition or "all"
        with self.connect() as con:
            self.ensure_ledger(con)
            con.execute(f"CREATE TABLE IF NOT EXISTS {STAGED_SWAPS} (token VARCHAR, asset VARCHAR, partition VARCHAR, "
                        "tables VARCHAR[], host VARCHAR, pid INTEGER, staged_at TIMESTAMP DEFAULT current_timestamp)")
            self._drop_stale(con, change.asset, partition)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"INSERT INTO {STAGED_SWAPS} (token, asset, partition, tables, host, pid) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [token, change.asset, partition, [*names, staged.ledger], socket.gethostname(),
                             os.getpid()])
                for sql, args in change.setup:
                    con.execute(sql, list(args))
                for k, (target, name) in enumerate(zip([change.rows, *change.side_tables], names)):
                    if k == 0 and change.ddl:
                        con.execute(f"CREATE TABLE {name} ({change.ddl})")
                        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM ({target.sql})", list(target.params))
                    else:
                        con.execute(f"CREATE TABLE {name} AS {target.sql}", list(target.params))
                con.execute(f"CREATE TABLE {staged.ledger} ({ddl_columns(LEDGER_COLUMNS_DDL)})")
                insert = (f"INSERT INTO {staged.ledger} (asset, partition, row_id, reason, detail, run_id) "
                          "SELECT ?, ?, row_id, reason, detail, ? FROM ")
                if change.ledger_sql is not None:
                    con.execute(insert + f"({change.ledger_sql})", [change.asset, partition, run_id,
                                                                    *change.ledger_params])
                if change.ledger_path is not None:
                    con.execute(insert + "read_parquet(?)", [change.asset, partition, run_id, str(change.ledger_path)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @staticmethod
    def _move_in(con: duckdb.DuckDBPyConnection, change: Swap, table: str, staged: str) -> None:
        """Inside the swap transaction: a whole table is renamed into place, a partition's rows are replaced."""
        if change.partition is None:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"ALTER TABLE {staged} RENAME TO {table}")
            return
        if change.ddl and table == change.rows.table:
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({change.ddl})")
        else:
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM {staged} LIMIT 0")
        con.execute(f"DELETE FROM {table} WHERE source = ?", [change.partition])
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {staged}")
        con.execute(f"DROP TABLE {staged}")

    @staticmethod
    def _drop_stale(con: duckdb.DuckDBPyConnection, asset: str, partition: str) -> None:
        """Staged tables of the same asset and partition left by a process that is gone (killed mid-swap): on this
        host, its pid is no longer running; elsewhere, staged more than a day ago."""
        here = socket.gethostname()
        for token, tables, host, pid, age_s in con.execute(
                f"SELECT token, tables, host, pid, epoch(current_timestamp::TIMESTAMP - staged_at) FROM {STAGED_SWAPS} "
                "WHERE asset = ? AND partition = ?", [asset, partition]).fetchall():
            if (host == here and not _pid_alive(pid)) or (host != here and age_s > 86_400):
                for name in tables:
                    con.execute(f"DROP TABLE IF EXISTS {check_identifier(name)}")
                con.execute(f"DELETE FROM {STAGED_SWAPS} WHERE token = ?", [token])

    def _drop_staged(self, token: str, names: list[str]) -> None:
        with self.connect() as con:
            for name in names:
                con.execute(f"DROP TABLE IF EXISTS {name}")
            if self._has_table(con, STAGED_SWAPS):
                con.execute(f"DELETE FROM {STAGED_SWAPS} WHERE token = ?", [token])

    @staticmethod
    def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                [table]).fetchone()[0])

    def record_stage(self, asset: str, run_id: str | None, params: dict, stats: dict,
                     partition: str | None = None) -> str:
        """Remember what produced a stage partition's rows (`params`: backend, model, sampling, thresholds... —
        what decides the rows) and its headline numbers (`stats`: rows, tokens, cost, wall time), in the warehouse
        itself (the dataset card is written from here, whatever Dagster instance ran the stage). Every record is
        kept, with a hash of `params`: the latest of a partition is its current one, and an earlier one with
        another hash is a rerun with other settings. Returns the settings hash."""
        params = json.loads(json.dumps(params, default=str))
        digest = settings_hash(params)
        with self.connect() as con:
            self.ensure_stage_runs(con)
            con.execute("BEGIN TRANSACTION")
            try:
                seq = con.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM {STAGE_RUNS}").fetchone()[0]
                con.execute(f"INSERT INTO {STAGE_RUNS} (seq, asset, partition, run_id, settings_hash, params, stats, "
                            "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                            [seq, asset, partition or ALL_PARTITIONS, run_id, digest, json.dumps(params),
                             json.dumps(stats, default=str)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return digest

    @staticmethod
    def ensure_stage_runs(con: duckdb.DuckDBPyConnection) -> None:
        """The `stage_runs` table; a warehouse written before it kept history (one row per asset, no partition) is
        migrated in place: its rows become the `all` partition's first records."""
        cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                          [STAGE_RUNS]).fetchall()]
        if cols and "partition" not in cols:
            old = con.execute(f"SELECT asset, run_id, params, stats, recorded_at FROM {STAGE_RUNS} "
                              "ORDER BY recorded_at, asset").fetchall()
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"ALTER TABLE {STAGE_RUNS} RENAME TO {STAGE_RUNS}_v1")
                con.execute(STAGE_RUNS_DDL)
                for seq, (asset, run_id, params, stats, at) in enumerate(old, 1):
                    con.execute(f"INSERT INTO {STAGE_RUNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [seq, asset, ALL_PARTITIONS, run_id, settings_hash(json.loads(params)), params, stats,
                                 at])
                con.execute(f"DROP TABLE {STAGE_RUNS}_v1")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        elif not cols:
            con.execute(STAGE_RUNS_DDL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))

    def stage_history(self, assets: Collection[str] | None = None) -> list[StageRun]:
        """Every stage record (of `assets`), oldest first."""
        with self.connect() as con:
            self.ensure_stage_runs(con)
            sql = (f"SELECT asset, partition, run_id, settings_hash, params, stats, recorded_at, seq FROM {STAGE_RUNS}"
                   + (" WHERE asset IN (SELECT unnest(?::VARCHAR[]))" if assets is not None else "") + " ORDER BY seq")
            rows = con.execute(sql, [list(assets)] if assets is not None else []).fetchall()
        return [StageRun(a, p, r, h, json.loads(pa), json.loads(st), at, seq) for a, p, r, h, pa, st, at, seq in rows]

    def stage_record(self, asset: str, partition: str | None = None) -> tuple[dict, dict]:
        """(params, stats) of the current record of a stage partition (unpartitioned: `all`); empty when none."""
        if not self.table_exists(STAGE_RUNS):
            return {}, {}
        runs = [r for r in self.stage_history([asset]) if r.partition == (partition or ALL_PARTITIONS)]
        return (dict(runs[-1].params), dict(runs[-1].stats)) if runs else ({}, {})

    def table_exists(self, table: str) -> bool:
        row = self.fetch_one("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table])
        return bool(row and row[0])

    def iter_keyset(self, table: str, columns: Sequence[str], key: str, *, where: str | None = None,
                    params: Sequence[Any] = (), batch_rows: int = 2000) -> Iterator[list[dict[str, Any]]]:
        """`SELECT columns FROM table [WHERE where]` in `key` order, `batch_rows` at a time (keyset pagination on a
        unique key: integer or text), each batch in its own short connection, so slow work on a batch never holds
        the DuckDB lock. Rows are dicts; the key is always among their columns."""
        table, key = check_identifier(table), check_identifier(key)
        names = [check_identifier(c) for c in columns]
        cols = ", ".join(names if key in names else [*names, key])
        last = None
        while True:
            conds = [f"({where})"] if where else []
            args = list(params)
            if last is not None:
                conds.append(f"{key} > ?")
                args.append(last)
            sql = f"SELECT {cols} FROM {table}" + (" WHERE " + " AND ".join(conds) if conds else "")
            with self.connect() as con:
                cur = con.execute(f"{sql} ORDER BY {key} LIMIT ?", [*args, batch_rows])
                fields = [d[0] for d in cur.description]
                rows = [dict(zip(fields, r)) for r in cur.fetchall()]
            if not rows:
                return
            yield rows
            last = rows[-1][key]

    def iter_partition(self, table: str, partition: str, columns: Sequence[str], batch_rows: int = 256):
        """One partition's rows in id order (`iter_keyset` on `id` where `source` = partition)."""
        return self.iter_keyset(table, columns, "id", where="source = ?", params=[partition], batch_rows=batch_rows)

    # ---- reads -------------------------------------------------------------------------------

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        # Read-write on purpose: DuckDB refuses two connections to one file with different
        # configurations in one process, and the lock is held only for this query.
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()

    def fetch_one(self, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
        rows = self.fetch(sql, params)
        return rows[0] if rows else None

    def ledger_counts(self, asset: str, partition: str | None = None) -> dict[str, int]:
        sql = f"SELECT reason, count(*) FROM {LEDGER_TABLE} WHERE asset = ?"
        params: list[Any] = [asset]
        if partition is not None:
            sql += " AND partition = ?"
            params.append(partition)
        sql += " GROUP BY reason ORDER BY count(*) DESC, reason"
        return {reason: n for reason, n in self.fetch(sql, params)}
