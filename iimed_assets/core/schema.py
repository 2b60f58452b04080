"""The sample row contract (ARCHITECTURE.md, "Data contract") and the row ledger schema.

Every table from the sources onward holds these columns; later stages add columns, never rename
these. Pure Python + pyarrow: no Dagster, no DuckDB connection.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pyarrow as pa

# The recipe's sections, in the card's order (partitions, section jobs and the cleaning union all use these).
PUBLIC_REASONING = "public_reasoning"
QA_SEED = "qa_seed"
R1_TRACES = "r1_traces"
INSTRUCT = "instruct"
EVAL = "eval"  # evaluation sets: decontamination references, never training rows
SECTIONS = (PUBLIC_REASONING, QA_SEED, R1_TRACES, INSTRUCT, EVAL)

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

# Arrow schema of a sample row. `options` is a map letter -> option text; `meta` is a JSON string.
SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("section", pa.string()),
        ("prompt", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("gold_answer", pa.string()),
        ("options", pa.map_(pa.string(), pa.string())),
        ("language", pa.string()),
        ("meta", pa.string()),
    ]
)

# The same columns in DuckDB. `meta` is JSON so it can be queried with ->> in SQL.
SAMPLE_COLUMNS_DDL = (
    ("id", "VARCHAR NOT NULL"),
    ("source", "VARCHAR NOT NULL"),
    ("section", "VARCHAR NOT NULL"),
    ("prompt", "VARCHAR NOT NULL"),
    ("messages", "STRUCT(role VARCHAR, content VARCHAR)[] NOT NULL"),
    ("gold_answer", "VARCHAR"),
    ("options", "MAP(VARCHAR, VARCHAR)"),
    ("language", "VARCHAR NOT NULL"),
    ("meta", "JSON"),
)
SAMPLE_COLUMN_NAMES = tuple(name for name, _ in SAMPLE_COLUMNS_DDL)

# Human descriptions, shown as the column schema in the Dagster UI.
SAMPLE_COLUMN_DESCRIPTIONS = {
    "id": "stable id: hash of source + native id (or of the content when the source has none)",
    "source": "registry source name (= the partition key)",
    "section": "recipe section: public_reasoning | qa_seed | r1_traces | instruct | eval",
    "prompt": "text of the last user turn",
    "messages": "chat turns; an assistant turn with reasoning holds <think>...</think> then the answer",
    "gold_answer": "reference answer: an option letter for multiple choice, else text",
    "options": "multiple-choice options, letter -> text",
    "language": "ISO 639-1 code",
    "meta": "JSON of native fields worth keeping",
}

LEDGER_COLUMNS_DDL = (
    ("asset", "VARCHAR NOT NULL"),
    ("partition", "VARCHAR NOT NULL"),
    ("row_id", "VARCHAR NOT NULL"),
    ("reason", "VARCHAR NOT NULL"),
    ("detail", "VARCHAR"),
    ("run_id", "VARCHAR"),
    ("recorded_at", "TIMESTAMP DEFAULT current_timestamp"),
)

# What a stage writes to stage files before the swap; asset/partition/run are added at swap time.
LEDGER_STAGE_SCHEMA = pa.schema([("row_id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])

# Short reason codes used by the loaders. Later stages add their own (e.g. domain:<label>).
class Reason:
    MISSING_PROMPT = "missing_prompt"
    EMPTY_PROMPT = "empty_prompt"
    WRONG_TYPE = "wrong_type"
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    OVERSIZE = "oversize"
    DUPLICATE_ID = "duplicate_id"
    BAD_MESSAGES = "bad_messages"
    BAD_GOLD = "bad_gold_answer"
    OUT_OF_SCOPE = "out_of_scope"
    OVER_ROW_LIMIT = "over_row_limit"
    UNPAIRED = "unpaired_question"  # a multi-sample item (ApolloCorpus) whose last question has no answer
    # Row-level faults that used to fail a whole partition or slip through as text (issue 21).
    TOO_DEEP = "too_deep"  # JSON (a record, or a string holding JSON) nested beyond Python's recursion limit
    LONE_SURROGATE = "lone_surrogate"  # a "\ud800"-style escape with no partner: not encodable as UTF-8
    NON_FINITE = "non_finite_number"  # NaN / Infinity where text or JSON is expected (it would read "nan")
    GOLD_NOT_IN_OPTIONS = "gold_not_in_options"  # a gold letter (or index) that names none of the row's options
    UNWRITABLE = "unwritable_row"  # any other value Arrow refuses to write (the row, not the batch, is dropped)
    RECORD_ERROR = "record_error"  # an unexpected exception while converting this one record (type: message)


_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_identifier(name: str) -> str:
    """Table and column names cannot be SQL parameters, so they must match a strict pattern."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe SQL identifier: {name!r}")
    return name


def make_row_id(source: str, native_id: Any) -> str:
    """Stable row id: the same source + native id always gives the same 24-hex-digit id."""
    key = f"{source}\x1f{native_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def content_key(*parts: str | None) -> str:
    """A native id for sources without one: a hash of the row's text."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update((part or "").encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return "content:" + h.hexdigest()


def response_text(messages: list[dict] | None) -> str:
    """The response of a sample row: the content of its last assistant turn ("" when there is none)."""
    for m in reversed(messages or []):
        if m["role"] == "assistant":
            return m["content"] or ""
    return ""


def ddl_columns(columns=SAMPLE_COLUMNS_DDL, extra: tuple[tuple[str, str], ...] = ()) -> str:
    return ", ".join(f"{check_identifier(n)} {t}" for n, t in (*columns, *extra))
