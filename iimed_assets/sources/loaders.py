"""Streaming readers for every place a source can live: the bundled sample, a local JSONL/Parquet/JSON
file or folder, or the Hugging Face hub (or a local mirror of its file tree). Each yields `RawItem`s one at
a time, so memory does not grow with the source; unreadable lines come out as items carrying a ledger
reason, never as an exception that stops the partition.

Items read from the hub, a hub mirror or a local file in the hub layout carry their registry entry
(`spec`): they become rows through `sources.records.rows_from_record`, the one hub conversion. Items of
the bundled sample carry the field map of their slice (the stand-ins have their own layouts).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from iimed_assets.core.normalize import FieldMap
from iimed_assets.core.schema import Reason
from iimed_assets.sources.registry import SourceSpec

SAMPLE_DIR = Path(__file__).parent / "sample"
DEFAULT_MAX_ROW_BYTES = 16 * 1024 * 1024  # long R1 traces reach ~200 KB; 16 MiB is clearly broken input


@dataclass
class RawItem:
    """One native record (or a line that could not be read, with `error` set).

    `spec` set: a record in its hub layout, converted by the entry's adapter + field map. Otherwise `fields`
    maps it (bundled sample slices, plain local files).
    """

    record: Any
    fields: FieldMap | None
    locator: str  # file:line, hub:index - where to find it again; used as the ledger id of unreadable rows
    native_prefix: str = ""
    fallback_id: str = ""
    error: tuple[str, str] | None = None
    spec: SourceSpec | None = None


class SourceUnavailable(RuntimeError):
    """A source that cannot be read in the configured mode (e.g. no offline copy, hub unreachable)."""


def _decompressed(fh: BinaryIO, name: str) -> BinaryIO:
    """A binary stream of the file's content: `.gz` and `.zst` (AM-DeepSeek-R1-Distilled ships zstd JSONL)
    are decompressed as they are read, so nothing is held whole."""
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh)
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True), 1 << 20)
    return fh


def _open_text_lines(path: Path):
    return _decompressed(open(path, "rb"), path.name)


def iter_jsonl(
    path: Path,
    fields: FieldMap | None,
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
            item = _line_item(raw, loc, fields, None, max_row_bytes)
            if item.error is None:
                item.native_prefix, item.fallback_id = native_prefix, (loc if line_ids else "")
            yield item


def _line_item(raw: bytes, loc: str, fields: FieldMap | None, spec: SourceSpec | None,
               max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> RawItem:
    """One JSONL line -> an item, or an item carrying why it cannot be read."""
    if len(raw) > max_row_bytes:
        return RawItem(None, fields, loc, error=(Reason.OVERSIZE, f"{len(raw)} bytes > {max_row_bytes}"), spec=spec)
    try:
        return RawItem(json.loads(raw.decode("utf-8")), fields, loc, spec=spec)
    except UnicodeDecodeError as exc:
        return RawItem(None, fields, loc, error=(Reason.INVALID_UTF8, f"byte {exc.start}: {exc.reason}"), spec=spec)
    except ValueError as exc:
        return RawItem(None, fields, loc, error=(Reason.INVALID_JSON, str(exc)[:200]), spec=spec)
    except RecursionError:
        return RawItem(None, fields, loc, error=(Reason.TOO_DEEP, _TOO_DEEP_DETAIL), spec=spec)


_TOO_DEEP_DETAIL = "JSON nested beyond Python's recursion limit"


def iter_parquet(path: Path, fields: FieldMap | None, *, batch_rows: int = 2048,
                 spec: SourceSpec | None = None) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            yield RawItem(record, fields, f"{path.name}:{index}", spec=spec)
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
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def iter_local(path: Path, fields: FieldMap | None = None, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
               spec: SourceSpec | None = None) -> Iterator[RawItem]:
    """A user's local copy: one file or a folder of JSONL / JSON-array / Parquet files, in name order.

    With `spec`, the records are in the entry's hub layout and go through its hub conversion.
    """
    if fields is None and spec is None:
        raise ValueError("iter_local needs a field map or a registry entry")
    for file in local_files(path):
        if _kind(file) == "parquet":
            yield from iter_parquet(file, fields, spec=spec)
        elif file.name.lower().endswith(".json") and _starts_with_array(file):
            with open(file, "rb") as fh:
                yield from _array_items(fh, file.name, fields, spec)
        else:
            for item in iter_jsonl(file, fields, max_row_bytes=max_row_bytes):
                item.spec = spec
                yield item


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"[")


_JSON_BRACKETS = re.compile(r'["\[\]{}]')
_IN_JSON_STRING = re.compile(r'\\.|"', re.S)  # an escape pair (skipped whole) or the closing quote


def iter_json_array(fh: BinaryIO, *, chunk_bytes: int = 1 << 20,
                    max_item_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[tuple[int, Any, tuple[str, str] | None]]:
    """Stream the items of one top-level JSON array, `(index, item, error)`, holding one item at a time.

    ApolloCorpus ships its QA files as one array per file (hundreds of MB), which neither `json.load` (whole
    file in memory) nor the `datasets` JSON builder (records only) reads well. A syntax error ends the file
    with one error item: the rest of an array cannot be resynchronised reliably.
    """
    import codecs

    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, eof, index = "", 0, False, 0

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = fh.read(chunk_bytes)
        if not chunk:
            eof = True
            buf += utf8.decode(b"", final=True)
            return False
        buf = buf[pos:] + utf8.decode(chunk)
        pos = 0
        return True

    def skip_ws() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not more():
                return buf[pos] if pos < len(buf) else ""

    def skip_value() -> str | None:
        """Move `pos` past the array or object at `pos` without decoding it (it is nested too deep to decode),
        by following its strings and brackets. None when done, else why the file cannot go on."""
        nonlocal pos
        depth, in_string, off = 0, False, 0
        while True:
            m = (_IN_JSON_STRING if in_string else _JSON_BRACKETS).search(buf, pos + off)
            if m is None:
                # a backslash at the very end may start an escape that the next chunk completes
                off = max(off, len(buf) - pos - (1 if in_string and buf.endswith("\\") else 0))
                if len(buf) - pos > max_item_bytes:
                    return Reason.OVERSIZE
                if not more():
                    return Reason.INVALID_JSON
                continue
            ch, off = m.group(0), m.end() - pos
            if in_string:
                in_string = ch != '"'  # else an escape pair, skipped whole
            elif ch == '"':
                in_string = True
            elif ch in "[{":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    pos = m.end()
                    return None

    try:
        if skip_ws() != "[":
            yield 0, None, (Reason.INVALID_JSON, "file does not start with a JSON array")
            return
        pos += 1
        if skip_ws() == "]":
            return
        while True:
            skip_ws()
            item: Any = None
            error: tuple[str, str] | None = None
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:  # a number at the buffer's edge may continue in the next chunk
                        break
                except ValueError:
                    pass
                except RecursionError:
                    # One item nested too deep: skip it by its brackets and go on with the next (the rest of
                    # the array stays readable, unlike after a syntax error).
                    why = skip_value()
                    if why is not None:
                        yield index, None, (why, f"item {index}: nested too deep to decode, and "
                                                 + ("over the size limit" if why == Reason.OVERSIZE else
                                                    "the file ends inside it"))
                        return
                    end, error = pos, (Reason.TOO_DEEP, f"item {index}: {_TOO_DEEP_DETAIL}")
                    break
                if len(buf) - pos > max_item_bytes:
                    yield index, None, (Reason.OVERSIZE, f"item {index} is over {max_item_bytes} bytes")
                    return
                if not more():
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                        break
                    except ValueError as exc:
                        yield index, None, (Reason.INVALID_JSON, f"item {index}: {str(exc)[:200]}")
                        return
                    except RecursionError:
                        continue  # the top of this loop skips it
            pos = end
            yield index, item, error
            index += 1
            sep = skip_ws()
            if sep == ",":
                pos += 1
            elif sep == "]":
                return
            else:
                yield index, None, (Reason.INVALID_JSON, f"expected ',' or ']' after item {index - 1}, "
                                                         f"found {sep[:1]!r}")
                return
    except UnicodeDecodeError as exc:
        yield index, None, (Reason.INVALID_UTF8, f"item {index}: {exc.reason}")


def _array_items(fh: BinaryIO, name: str, fields: FieldMap | None, spec: SourceSpec | None) -> Iterator[RawItem]:
    for i, record, error in iter_json_array(fh):
        yield RawItem(record, fields, f"{name}:{i}", error=error, spec=spec)


def iter_sample(spec: SourceSpec, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[RawItem]:
    """The bundled sample's slices for this source (see sources/sample/README.md)."""
    for sl in spec.sample:
        path = SAMPLE_DIR / sl.path
        if not path.exists():
            raise SourceUnavailable(f"bundled sample file {path} is missing; reinstall the package")
        # Ids are prefixed with the file so two slices with the same native ids never collide.
        yield from iter_jsonl(path, sl.fields, start=sl.start, stop=sl.stop, max_row_bytes=max_row_bytes,
                              locator_prefix=sl.path, native_prefix=f"{sl.path}#", line_ids=True)


def hub_root(spec: SourceSpec, mirror: Path | None) -> str:
    """The repo id, or its folder in a local hub mirror (`<mirror>/<owner>/<name>`, the repo's file tree)."""
    if spec.hf_id is None:
        raise SourceUnavailable(
            f"{spec.name} has no hub copy; set IIMED_SOURCE_{spec.name.upper()} to a local JSONL/JSON/Parquet "
            "file or folder")
    if mirror is None:
        return spec.hf_id
    root = Path(mirror).expanduser() / spec.hf_id
    if not root.is_dir():
        raise SourceUnavailable(f"the hub mirror has no {root} (expected the file tree of {spec.hf_id} there)")
    return str(root)


def iter_hub(spec: SourceSpec, *, mirror: Path | None = None, token_env: str = "HF_TOKEN") -> Iterator[RawItem]:
    """Stream a source in its hub layout: from the hub, or from a local mirror of the repo's file tree.

    `reader="datasets"`: `datasets.load_dataset(repo_or_folder, config, data_files=..., split=..., streaming=True)`
    with the entry's own arguments. `reader="json_array"` / `"jsonl"`: the entry's `files`, read by our own
    streaming readers (files `datasets` cannot read as records, or whose types vary row to row).
    """
    root = hub_root(spec, mirror)
    token = os.environ.get(token_env) or None
    if spec.reader == "datasets":
        yield from _iter_datasets(spec, root, token)
        return
    for name in spec.files:
        with _decompressed(_open_hub_file(spec, root, name, mirror is not None, token), name) as fh:
            if spec.reader == "json_array":
                yield from _array_items(fh, name, None, spec)
            elif spec.reader == "jsonl":
                for lineno, raw in enumerate(fh, start=1):
                    if raw.strip():
                        yield _line_item(raw, f"{name}:{lineno}", None, spec)
            else:  # pragma: no cover - a registry typo, caught by the registry tests
                raise ValueError(f"{spec.name}: unknown reader {spec.reader!r}")


def _iter_datasets(spec: SourceSpec, root: str, token: str | None) -> Iterator[RawItem]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise SourceUnavailable("the `datasets` package is required for hub mode") from exc
    for config in spec.configs:
        kwargs: dict[str, Any] = {"split": spec.split, "streaming": True, "token": token}
        if spec.data_files:
            kwargs["data_files"] = list(spec.data_files) if isinstance(spec.data_files, tuple) else spec.data_files
        try:
            ds = datasets.load_dataset(root, config, **kwargs)
            records = iter(ds)
        except Exception as exc:  # network, auth, missing config: all make the source unavailable
            raise SourceUnavailable(f"cannot stream {root} ({config or 'default'}/{spec.split}): {exc}") from exc
        for index, record in enumerate(records):
            yield RawItem(record, None, f"hub:{config or 'default'}:{index}", spec=spec)


def _open_hub_file(spec: SourceSpec, root: str, name: str, local: bool, token: str | None):
    if local:
        path = Path(root) / name
        if not path.exists():
            raise SourceUnavailable(f"the hub mirror has no {path}")
        return open(path, "rb")
    try:
        from huggingface_hub import HfFileSystem

        # HfFileSystem reads the file in ranged blocks: a 20 GB JSONL streams without a local copy.
        return HfFileSystem(token=token).open(f"datasets/{spec.hf_id}/{name}", "rb", block_size=8 << 20)
    except Exception as exc:
        raise SourceUnavailable(f"cannot open {spec.hf_id}/{name} on the hub: {exc}") from exc
