"""Turn a stream of raw items into staged Parquet files: accepted sample rows and ledger rows.

Slow work (reading, parsing, normalising) happens here, outside any DuckDB connection; the warehouse
then swaps the staged files into its tables in one short transaction. Memory stays flat: rows are
buffered `batch_rows` at a time and written out.

Counting: one native item gives one outcome, or several (an ApolloCorpus item holds several question/answer
pairs), and every outcome is either a staged row or a ledger row. So `rows_in` = items read + the extra
outcomes of multi-sample items = rows staged + ledger rows; the warehouse then ledgers duplicate ids.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from iimed_assets.core.coverage import FieldCoverage
from iimed_assets.core.normalize import RowRejected, any_nested, as_rejection, normalize_record, required_roots
from iimed_assets.core.schema import LEDGER_STAGE_SCHEMA, SAMPLE_SCHEMA, Reason
from iimed_assets.sources.loaders import RawItem
from iimed_assets.sources.records import hub_outcomes, required_fields

STAGED_ROW_SCHEMA = SAMPLE_SCHEMA.append(pa.field("_ordinal", pa.int64()))


class FieldMappingError(ValueError):
    """The source's records do not have the fields its map names: fix the registry or the override."""


@dataclass
class IngestResult:
    rows_path: Path
    ledger_path: Path
    rows_read: int = 0  # native items read (records, lines, Apollo lists)
    rows_from_expansion: int = 0  # outcomes beyond the first of multi-sample items (Apollo pairs 2..n)
    rows_staged: int = 0
    rejected: Counter = field(default_factory=Counter)
    coverage: FieldCoverage = field(default_factory=FieldCoverage)
    seconds: float = 0.0

    @property
    def rows_in(self) -> int:
        """Outcomes to account for: items read + extra rows of multi-sample items = staged + ledgered."""
        return self.rows_read + self.rows_from_expansion

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


class BatchWriter:
    """Buffers dict rows and writes them to one Parquet file `batch_rows` at a time."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int):
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self.buffer: list[dict] = []
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()
            self.writer = None


class CheckedRowWriter(BatchWriter):
    """A BatchWriter that never lets one row fail its batch: when Arrow refuses a batch (a lone surrogate from a
    `"\\ud800"` escape cannot be encoded as UTF-8), the batch is bisected, the good rows are written in order and
    each refused row goes to `rejected(row, reason, detail)`. `written(rows)` sees every row written. The happy
    path costs nothing extra: rows are checked only when their batch fails."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int,
                 written: Callable[[list[dict]], None], rejected: Callable[[dict, str, str], None]):
        super().__init__(path, schema, batch_rows)
        self.written, self.rejected = written, rejected

    def flush(self) -> None:
        rows, self.buffer = self.buffer, []
        for chunk, table in self._tables(rows):
            self.writer.write_table(table)
            self.written(chunk)

    def _tables(self, rows: list[dict]) -> list[tuple[list[dict], pa.Table]]:
        if not rows:
            return []
        try:
            return [(rows, pa.Table.from_pylist(rows, schema=self.schema))]
        except (UnicodeError, pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            if len(rows) > 1:
                mid = len(rows) // 2
                return self._tables(rows[:mid]) + self._tables(rows[mid:])
            self.rejected(rows[0], *unwritable_reason(rows[0], exc))
            return []


def unwritable_reason(row: dict, exc: BaseException) -> tuple[str, str]:
    """The ledger reason and detail for a row Arrow refused: `lone_surrogate` (naming the field) or
    `unwritable_row`."""
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc):
        field = next((k for k, v in row.items() if _has_surrogate(v)), "a field")
        return Reason.LONE_SURROGATE, f"{field} holds a lone UTF-16 surrogate (e.g. an unpaired \\ud800 escape)"
    return Reason.UNWRITABLE, safe_text(f"{type(exc).__name__}: {exc}")[:300]


def _lone_surrogate(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_surrogate(value) -> bool:
    return any_nested(value, _lone_surrogate)


def safe_text(text: str) -> str:
    """Text that UTF-8 (hence Parquet) can hold: lone surrogates written as `\\udXXX` escapes. Ledger details
    and locators quote the input, and the ledger must not fail on the row it reports."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def ingest(
    items: Iterable[RawItem],
    *,
    source: str,
    section: str,
    staging_dir: Path,
    batch_rows: int = 5000,
    max_rows: int | None = None,
    progress: Callable[[int, float], None] | None = None,
    progress_every: int = 50_000,
) -> IngestResult:
    """Normalise every item; stage accepted rows and ledger rows as Parquet in `staging_dir`.

    Every item read ends up in exactly one of the two files (duplicate ids are resolved later, in the
    warehouse, where the whole partition can be seen without holding it in memory).
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    result = IngestResult(rows_path=staging_dir / "rows.parquet", ledger_path=staging_dir / "ledger.parquet")
    ledger = BatchWriter(result.ledger_path, LEDGER_STAGE_SCHEMA, batch_rows)

    def reject(locator: str, reason: str, detail: str) -> None:
        result.rejected[reason] += 1
        ledger.add({"row_id": safe_text(locator), "reason": reason, "detail": safe_text(detail[:500])})

    def written(batch: list[dict]) -> None:  # coverage and counts describe the rows actually staged
        result.rows_staged += len(batch)
        for row in batch:
            result.coverage.add(row)

    rows = CheckedRowWriter(result.rows_path, STAGED_ROW_SCHEMA, batch_rows, written,
                            lambda row, reason, detail: reject(row["_locator"], reason, detail))
    probes: dict[int, _MappingProbe] = {}
    started = time.perf_counter()
    try:
        for item in items:
            if max_rows is not None and result.rows_read >= max_rows:
                break
            result.rows_read += 1
            if item.error is None:
                key = id(item.spec) if item.spec is not None else id(item.fields)
                probe = probes.get(key)
                if probe is None:
                    probe = probes[key] = _MappingProbe(item, source)
                probe.see(item)
            outcomes = _outcomes(item, source, section)
            result.rows_from_expansion += len(outcomes) - 1
            for k, outcome in enumerate(outcomes):
                locator = item.locator if len(outcomes) == 1 else f"{item.locator}#{k}"
                if isinstance(outcome, RowRejected):
                    reject(locator, outcome.reason, outcome.detail)
                    continue
                outcome["_ordinal"] = result.rows_in - len(outcomes) + k + 1
                outcome["_locator"] = locator  # not a column: the ledger id if Arrow refuses the row
                rows.add(outcome)
            if progress is not None and result.rows_read % progress_every == 0:
                progress(result.rows_read, time.perf_counter() - started)
        for probe in probes.values():
            probe.finish()
    finally:
        rows.close()
        ledger.close()
        result.seconds = time.perf_counter() - started
    return result


def _outcomes(item: RawItem, source: str, section: str) -> list[dict | RowRejected]:
    """What one item becomes: hub-layout items through the hub conversion, sample items through their map."""
    if item.error is not None:
        return [RowRejected(*item.error)]
    if item.spec is not None:
        return hub_outcomes(item.spec, item.record)
    try:
        return [normalize_record(item.record, item.fields, source=source, section=section,
                                 fallback_native_id=item.fallback_id, native_prefix=item.native_prefix)]
    except Exception as exc:  # noqa: BLE001 - one record's failure is its ledger row (as_rejection)
        return [as_rejection(exc)]


class _MappingProbe:
    """Tells a wrong field map (every record lacks the prompt field) from a few bad rows.

    Bad rows go to the ledger; but if the first `window` readable records of a map all lack a
    required field, the map is wrong, and the run stops with the fields the records do have.
    """

    window = 100

    def __init__(self, first: RawItem, source: str):
        self.source = source
        self.required = required_fields(first.spec) if first.spec is not None else required_roots(first.fields)
        self.where = ("the hub layout of registry entry " + repr(first.spec.name)) if first.spec is not None \
            else "the field map"
        self.seen = self.missing = 0
        self.example: RawItem | None = None

    def _hard(self, record) -> list[str]:
        if not isinstance(record, dict):
            return []
        return sorted(f for f in self.required if not any(alt in record for alt in f.split("|")))

    def see(self, item: RawItem) -> None:
        if self.seen >= self.window:
            return
        self.seen += 1
        if self._hard(item.record):
            self.missing += 1
            self.example = self.example or item
        if self.seen == self.window:
            self.finish()

    def finish(self) -> None:
        if self.seen and self.missing == self.seen and self.example is not None:
            rec = self.example.record
            keys = ", ".join(sorted(rec)[:30]) if isinstance(rec, dict) else type(rec).__name__
            raise FieldMappingError(
                f"source {self.source!r}: none of the first {self.seen} records has the field(s) "
                f"{self._hard(rec)} that {self.where} reads (e.g. {self.example.locator} has: {keys}). Fix the "
                "entry in iimed_assets/sources/registry.py or point the source at a file with that layout.")


def staged_duplicates(rows_path: Path, examples: int = 3) -> tuple[int, list[tuple[str, int]]]:
    """Rows whose id repeats an earlier staged row (what the swap will ledger as `duplicate_id`), and the
    most repeated ids. Read from the staged file by an in-memory DuckDB, before any swap."""
    import duckdb

    con = duckdb.connect()
    try:
        dup = con.execute("SELECT count(*) - count(DISTINCT id) FROM read_parquet(?)", [str(rows_path)]).fetchone()[0]
        top = con.execute("SELECT id, count(*) AS n FROM read_parquet(?) GROUP BY id HAVING n > 1 "
                          "ORDER BY n DESC, id LIMIT ?", [str(rows_path), examples]).fetchall()
    finally:
        con.close()
    return int(dup), [(i, int(n)) for i, n in top]
