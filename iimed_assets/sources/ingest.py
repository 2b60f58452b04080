"""Turn a stream of raw items into staged Parquet files: accepted sample rows and ledger rows.

Slow work (reading, parsing, normalising) happens here, outside any DuckDB connection; the warehouse
then swaps the staged files into its tables in one short transaction. Memory stays flat: rows are
buffered `batch_rows` at a time and written out.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from iimed_assets.core.normalize import FieldMap, RowRejected, missing_fields, normalize_record
from iimed_assets.core.schema import LEDGER_STAGE_SCHEMA, SAMPLE_SCHEMA
from iimed_assets.sources.loaders import RawItem

STAGED_ROW_SCHEMA = SAMPLE_SCHEMA.append(pa.field("_ordinal", pa.int64()))


class FieldMappingError(ValueError):
    """The source's records do not have the fields its map names: fix the registry or the override."""


@dataclass
class IngestResult:
    rows_path: Path
    ledger_path: Path
    rows_read: int = 0
    rows_staged: int = 0
    rejected: Counter = field(default_factory=Counter)
    seconds: float = 0.0

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
    rows = BatchWriter(result.rows_path, STAGED_ROW_SCHEMA, batch_rows)
    ledger = BatchWriter(result.ledger_path, LEDGER_STAGE_SCHEMA, batch_rows)
    probes: dict[int, _MappingProbe] = {}
    started = time.perf_counter()
    try:
        for item in items:
            if max_rows is not None and result.rows_read >= max_rows:
                break
            result.rows_read += 1
            if item.error is None:
                probe = probes.get(id(item.fields))
                if probe is None:
                    probe = probes[id(item.fields)] = _MappingProbe(item.fields, source)
                probe.see(item)
            try:
                if item.error is not None:
                    raise RowRejected(*item.error)
                row = normalize_record(item.record, item.fields, source=source, section=section,
                                       fallback_native_id=item.fallback_id, native_prefix=item.native_prefix)
            except RowRejected as rej:
                result.rejected[rej.reason] += 1
                ledger.add({"row_id": item.locator, "reason": rej.reason, "detail": rej.detail[:500]})
                continue
            row["_ordinal"] = result.rows_read
            rows.add(row)
            result.rows_staged += 1
            if progress is not None and result.rows_read % progress_every == 0:
                progress(result.rows_read, time.perf_counter() - started)
        for probe in probes.values():
            probe.finish()
    finally:
        rows.close()
        ledger.close()
        result.seconds = time.perf_counter() - started
    return result


class _MappingProbe:
    """Tells a wrong field map (every record lacks the prompt field) from a few bad rows.

    Bad rows go to the ledger; but if the first `window` readable records of a map all lack a
    required field, the map is wrong, and the run stops with the fields the records do have.
    """

    window = 100

    def __init__(self, fields: FieldMap, source: str):
        self.fields, self.source = fields, source
        self.required = _required_roots(fields)
        self.seen = self.missing = 0
        self.example: RawItem | None = None

    def see(self, item: RawItem) -> None:
        if self.seen >= self.window:
            return
        self.seen += 1
        hard = [m for m in missing_fields(item.record, self.fields) if m in self.required]
        if hard:
            self.missing += 1
            self.example = self.example or item
        if self.seen == self.window:
            self.finish()

    def finish(self) -> None:
        if self.seen and self.missing == self.seen and self.example is not None:
            rec = self.example.record
            keys = ", ".join(sorted(rec)[:30]) if isinstance(rec, dict) else type(rec).__name__
            hard = [m for m in missing_fields(rec, self.fields) if m in self.required]
            raise FieldMappingError(
                f"source {self.source!r}: none of the first {self.seen} records has the mapped field(s) {hard} "
                f"(e.g. {self.example.locator} has: {keys}). Fix the field map in "
                "iimed_assets/sources/registry.py or point the source at a file with that layout.")


def _required_roots(fm: FieldMap) -> set[str]:
    paths = []
    if fm.conversation:
        paths.append(fm.conversation)
    elif isinstance(fm.prompt, str):
        paths.append(fm.prompt)
    elif isinstance(fm.prompt, tuple):
        paths.extend(fm.prompt)
    return {p.split(".")[0] for p in paths}

