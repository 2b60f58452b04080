"""Streaming readers for every place a source can live: the bundled sample, a local JSONL/Parquet
mirror, or the Hugging Face hub (streaming). Each yields `RawItem`s one at a time, so memory does
not grow with the source; unreadable lines come out as items carrying a ledger reason, never as an
exception that stops the partition.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from iimed_assets.core.normalize import FieldMap
from iimed_assets.core.schema import Reason
from iimed_assets.sources.registry import SourceSpec

SAMPLE_DIR = Path(__file__).parent / "sample"
DEFAULT_MAX_ROW_BYTES = 16 * 1024 * 1024  # long R1 traces reach ~200 KB; 16 MiB is clearly broken input


@dataclass
class RawItem:
    """One native record (or a line that could not be read, with `error` set)."""

    record: Any
    fields: FieldMap
    locator: str  # file:line, hub:index - where to find it again; used as the ledger id of unreadable rows
    native_prefix: str = ""
    fallback_id: str = ""
    error: tuple[str, str] | None = None


class SourceUnavailable(RuntimeError):
    """A source that cannot be read in the configured mode (e.g. no offline copy, hub unreachable)."""


def _open_text_lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rb")


def iter_jsonl(
    path: Path,
    fields: FieldMap,
    *,
    start: int = 0,
    stop: int | None = None,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    locator_prefix: str | None = None,
    native_prefix: str = "",
    line_ids: bool = False,
) -> Iterator[RawItem]:
    """Read JSONL line by line. Lines are numbered from 1 over non-blank lines' file positions."""
    prefix = locator_prefix if locator_prefix is not None else path.name
    index = -1
    with _open_text_lines(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            index += 1
            if index < start:
                continue
            if stop is not None and index >= stop:
                break
            loc = f"{prefix}:{lineno}"
            fallback = loc if line_ids else ""
            if len(raw) > max_row_bytes:
                yield RawItem(None, fields, loc, error=(Reason.OVERSIZE, f"{len(raw)} bytes > {max_row_bytes}"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawItem(None, fields, loc, error=(Reason.INVALID_UTF8, f"byte {exc.start}: {exc.reason}"))
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                yield RawItem(None, fields, loc, error=(Reason.INVALID_JSON, str(exc)[:200]))
                continue
            yield RawItem(record, fields, loc, native_prefix=native_prefix, fallback_id=fallback)


def iter_parquet(path: Path, fields: FieldMap, *, batch_rows: int = 2048) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            yield RawItem(record, fields, f"{path.name}:{index}")
            index += 1


def local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
        if not files:
            raise SourceUnavailable(f"{path} holds no .jsonl/.json/.parquet files")
        return files
    if not path.exists():
        raise SourceUnavailable(f"local source file {path} does not exist")
    return [path]


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def iter_local(path: Path, fields: FieldMap, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[RawItem]:
    """A user's local mirror: one file or a folder of JSONL / Parquet files, in name order."""
    for file in local_files(path):
        if _kind(file) == "parquet":
            yield from iter_parquet(file, fields)
        elif file.name.lower().endswith(".json") and _starts_with_array(file):
            yield from _iter_json_array(file, fields)
        else:
            yield from iter_jsonl(file, fields, max_row_bytes=max_row_bytes)


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"[")


def _iter_json_array(path: Path, fields: FieldMap) -> Iterator[RawItem]:
    # A .json file holding one array (ApolloCorpus ships its QA files this way). The file is parsed
    # whole: such files are at most a few hundred MB; convert to JSONL for anything bigger.
    with open(path, "rb") as fh:
        data = json.load(fh)
    for i, record in enumerate(data):
        yield RawItem(record, fields, f"{path.name}:{i}")


def iter_sample(spec: SourceSpec, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[RawItem]:
    """The bundled sample's slices for this source (see sources/sample/README.md)."""
    for sl in spec.sample:
        path = SAMPLE_DIR / sl.path
        if not path.exists():
            raise SourceUnavailable(f"bundled sample file {path} is missing; reinstall the package")
        # Ids are prefixed with the file so two slices with the same native ids never collide.
        yield from iter_jsonl(path, sl.fields, start=sl.start, stop=sl.stop, max_row_bytes=max_row_bytes,
                              locator_prefix=sl.path, native_prefix=f"{sl.path}#", line_ids=True)


def iter_hub(spec: SourceSpec, *, token_env: str = "HF_TOKEN") -> Iterator[RawItem]:
    """Stream a source from the Hugging Face hub with `datasets` streaming (nothing held whole)."""
    if spec.hf_id is None:
        raise SourceUnavailable(
            f"{spec.name} has no hub copy; set IIMED_SOURCE_{spec.name.upper()} to a local JSONL/Parquet path")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise SourceUnavailable("the `datasets` package is required for hub mode") from exc
    token = os.environ.get(token_env) or None
    index = 0
    for config in spec.configs:
        kwargs: dict[str, Any] = {"split": spec.split, "streaming": True, "token": token}
        if spec.data_files:
            kwargs["data_files"] = spec.data_files
        try:
            ds = datasets.load_dataset(spec.hf_id, config, **kwargs)
        except Exception as exc:  # network, auth, missing config: all make the source unavailable
            raise SourceUnavailable(f"cannot stream {spec.hf_id} ({config or 'default'}/{spec.split}): {exc}") from exc
        for record in ds:
            yield RawItem(record, spec.fields, f"hub:{config or 'default'}:{index}")
            index += 1
