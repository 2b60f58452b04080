"""The DuckDB warehouse: one file, short connections, atomic partition swaps, the row ledger.

DuckDB allows one writing process per file. Stages therefore do their slow work outside any
connection, stage their output as Parquet, and hold a connection only for the swap; a process that
finds the file locked waits with jittered exponential backoff instead of failing. That is what lets
parallel partition runs (multiprocess executor, backfills) share one file.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import dagster as dg
import duckdb
from pydantic import Field

from iimed_assets.core.schema import (
    LEDGER_COLUMNS_DDL,
    SAMPLE_COLUMN_NAMES,
    SAMPLE_COLUMNS_DDL,
    check_identifier,
    ddl_columns,
)

LEDGER_TABLE = "row_ledger"
ENV_WAREHOUSE = "IIMED_WAREHOUSE"
ENV_MEMORY = "IIMED_DUCKDB_MEMORY_LIMIT"


def default_warehouse_path() -> Path:
    """`$IIMED_WAREHOUSE`, else `data/warehouse.duckdb` in the project checkout (git-ignored)."""
    env = os.environ.get(ENV_WAREHOUSE)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / "data" / "warehouse.duckdb"


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text or "in use" in text)


class WarehouseLockTimeout(RuntimeError):
    pass


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
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits (with backoff) while another process holds the file."""
        db = self.database
        db.parent.mkdir(parents=True, exist_ok=True)
        # A bounded buffer pool keeps memory flat as tables grow; DuckDB spills to <db>.tmp beyond it.
        config: dict[str, Any] = {"memory_limit": self.memory_limit or os.environ.get(ENV_MEMORY, "2GB")}
        if self.threads:
            config["threads"] = self.threads
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                # A read-only open of a file that does not exist yet fails: create it first.
                ro = read_only and db.exists()
                con = duckdb.connect(str(db), read_only=ro, config=config)
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
    def ensure_sample_table(con: duckdb.DuckDBPyConnection, table: str,
                            extra: Sequence[tuple[str, str]] = ()) -> None:
        con.execute(f"CREATE TABLE IF NOT EXISTS {check_identifier(table)} ({ddl_columns(SAMPLE_COLUMNS_DDL, tuple(extra))})")

    @staticmethod
    def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} ({ddl_columns(LEDGER_COLUMNS_DDL)})")

    # ---- the partition swap --------------------------------------------------------------------

    def replace_source_partition(
        self,
        *,
        table: str,
        asset: str,
        partition: str,
        rows_path: Path,
        ledger_path: Path,
        run_id: str | None,
    ) -> None:
        """Replace one source partition's rows and ledger entries in a single transaction.

        Duplicate ids within the staged rows keep their first occurrence; the others are ledgered as
        `duplicate_id`, with the ordinal of the row that was kept. A failure rolls everything back, so
        the previous rows stay in place.
        """
        table = check_identifier(table)
        cols = ", ".join(SAMPLE_COLUMN_NAMES)
        staged = "read_parquet(?)"
        with self.connect() as con:
            self.ensure_sample_table(con, table)
            self.ensure_ledger(con)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {table} WHERE source = ?", [partition])
                con.execute(f"DELETE FROM {LEDGER_TABLE} WHERE asset = ? AND partition = ?", [asset, partition])
                # Find duplicates on (id, ordinal) only, so the window never carries the row text;
                # then stream the rows in, skipping them. Scans keep file order (insertion order).
                con.execute(
                    "CREATE OR REPLACE TEMP TABLE _dup_rows AS SELECT id, _ordinal, _first FROM ("
                    "SELECT id, _ordinal, row_number() OVER (PARTITION BY id ORDER BY _ordinal) AS _rank, "
                    f"min(_ordinal) OVER (PARTITION BY id) AS _first FROM {staged}) WHERE _rank > 1",
                    [str(rows_path)])
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staged} "
                            "WHERE _ordinal NOT IN (SELECT _ordinal FROM _dup_rows)", [str(rows_path)])
                con.execute(
                    f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                    "SELECT ?, ?, id, 'duplicate_id', 'same id as input row ' || _first || ' (kept); this is row ' "
                    "|| _ordinal, ? FROM _dup_rows ORDER BY _ordinal", [asset, partition, run_id])
                con.execute("DROP TABLE _dup_rows")
                con.execute(
                    f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                    f"SELECT ?, ?, row_id, reason, detail, ? FROM read_parquet(?)",
                    [asset, partition, run_id, str(ledger_path)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def replace_stage_partition(
        self,
        *,
        table: str,
        asset: str,
        partition: str,
        select_sql: str,
        params: Sequence[Any],
        ledger_path: Path,
        run_id: str | None,
        side_tables: Sequence[tuple[str, str, Sequence[Any]]] = (),
    ) -> None:
        """Replace one partition of a stage table with the rows of `select_sql`, in one transaction.

        The table is created from the select's own column types the first time. `select_sql` must yield
        only rows of `partition` (its `source` column); the stage's ledger rows replace the old ones.
        `side_tables` are (table, select_sql, params) triples swapped in the same transaction: a stage's
        per-item detail table (e.g. one verdict per sampled response) never disagrees with its rows.
        """
        targets = [(check_identifier(table), select_sql, list(params))]
        targets += [(check_identifier(t), sql, list(p)) for t, sql, p in side_tables]
        with self.connect() as con:
            self.ensure_ledger(con)
            for name, sql, args in targets:
                con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM ({sql}) LIMIT 0", args)
            con.execute("BEGIN TRANSACTION")
            try:
                for name, sql, args in targets:
                    con.execute(f"DELETE FROM {name} WHERE source = ?", [partition])
                    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM ({sql})", args)
                con.execute(f"DELETE FROM {LEDGER_TABLE} WHERE asset = ? AND partition = ?", [asset, partition])
                con.execute(
                    f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                    "SELECT ?, ?, row_id, reason, detail, ? FROM read_parquet(?)",
                    [asset, partition, run_id, str(ledger_path)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def replace_table(self, *, table: str, asset: str, select_sql: str, params: Sequence[Any],
                      ledger_path: Path | None, run_id: str | None, partition: str = "all",
                      ledger_sql: str | None = None, ledger_params: Sequence[Any] = (),
                      side_tables: Sequence[tuple[str, str, Sequence[Any]]] = ()) -> None:
        """Replace a whole (unpartitioned) stage table and its ledger rows in one transaction. Ledger rows come
        from a staged Parquet file and/or `ledger_sql` (a select of row_id, reason, detail), in the same
        transaction, so they are read from the same snapshot as the table. `side_tables` are (table,
        select_sql, params) replaced in the same transaction (e.g. cluster centroids beside assignments)."""
        targets = [(check_identifier(table), select_sql, list(params))]
        targets += [(check_identifier(t), sql, list(p)) for t, sql, p in side_tables]
        with self.connect() as con:
            self.ensure_ledger(con)
            con.execute("BEGIN TRANSACTION")
            try:
                for name, sql, args in targets:
                    con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}", args)
                con.execute(f"DELETE FROM {LEDGER_TABLE} WHERE asset = ?", [asset])
                if ledger_path is not None:
                    con.execute(
                        f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                        "SELECT ?, ?, row_id, reason, detail, ? FROM read_parquet(?)",
                        [asset, partition, run_id, str(ledger_path)])
                if ledger_sql is not None:
                    con.execute(
                        f"INSERT INTO {LEDGER_TABLE} (asset, partition, row_id, reason, detail, run_id) "
                        f"SELECT ?, ?, row_id, reason, detail, ? FROM ({ledger_sql})",
                        [asset, partition, run_id, *ledger_params])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def record_stage(self, asset: str, run_id: str | None, params: dict, stats: dict) -> None:
        """Remember the parameters and headline numbers of a stage's last materialization in the warehouse
        itself (the dataset card is written from here, whatever Dagster instance ran the stage)."""
        import json

        with self.connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS stage_runs (asset VARCHAR PRIMARY KEY, run_id VARCHAR, "
                        "params JSON, stats JSON, recorded_at TIMESTAMP DEFAULT current_timestamp)")
            con.execute("INSERT OR REPLACE INTO stage_runs (asset, run_id, params, stats, recorded_at) "
                        "VALUES (?, ?, ?, ?, current_timestamp)",
                        [asset, run_id, json.dumps(params, default=str), json.dumps(stats, default=str)])

    def stage_record(self, asset: str) -> tuple[dict, dict]:
        import json

        if not self.table_exists("stage_runs"):
            return {}, {}
        row = self.fetch_one("SELECT params, stats FROM stage_runs WHERE asset = ?", [asset])
        return (json.loads(row[0]), json.loads(row[1])) if row else ({}, {})

    def table_exists(self, table: str) -> bool:
        row = self.fetch_one("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table])
        return bool(row and row[0])

    def iter_ordered(self, sql_from: str, columns: Sequence[str], order_col: str, params: Sequence[Any] = (),
                     batch_rows: int = 2000):
        """Keyset-paginated read of `SELECT columns FROM sql_from` by an integer `order_col`, batch by batch, each
        in its own short connection."""
        cols = ", ".join(check_identifier(c) for c in columns)
        order_col = check_identifier(order_col)
        last = -1
        while True:
            with self.connect() as con:
                cur = con.execute(f"SELECT {cols} FROM {sql_from} WHERE {order_col} > ? ORDER BY {order_col} LIMIT ?",
                                  [*params, last, batch_rows])
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
            if not rows:
                return
            yield rows
            last = rows[-1][order_col]

    def iter_partition(self, table: str, partition: str, columns: Sequence[str], batch_rows: int = 256):
        """Yield one partition's rows in id order, `batch_rows` at a time, each batch in its own short
        connection (keyset pagination), so slow per-batch work never holds the DuckDB lock."""
        table = check_identifier(table)
        cols = ", ".join(check_identifier(c) for c in columns)
        last = ""
        while True:
            with self.connect() as con:
                cur = con.execute(f"SELECT {cols} FROM {table} WHERE source = ? AND id > ? ORDER BY id LIMIT ?",
                                  [partition, last, batch_rows])
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
            if not rows:
                return
            yield rows
            last = rows[-1]["id"]

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
