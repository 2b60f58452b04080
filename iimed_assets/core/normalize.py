"""Normalise one raw source record into a sample row.

A `FieldMap` says where each sample-row field lives in a source's native record; `normalize_record`
applies it and raises `RowRejected(reason, detail)` for a row that cannot become a sample row. The
loaders turn that exception into a ledger row, so one bad record never stops a partition.
"""

from __future__ import annotations

import ast
import json
import math
import re
import string
import unicodedata
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iimed_assets.core.schema import Reason, content_key, make_row_id

LETTERS = string.ascii_uppercase


class RowRejected(Exception):
    """A record that cannot become a sample row. `reason` is a short ledger code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FieldMap:
    """Where a source keeps each field of the sample row. Paths are dotted (`instances.input`).

    gold_format says how to read `gold_answer`:
      text        - as it is
      letter      - an option letter ("C", "(C)", ["C"])
      index0      - a 0-based option index
      option_text - the text of the correct option (turned into its letter)
      answer_tag  - "Answer: (A)"-style text
      option_key  - the key of the correct option in a keyed options map ("option3" -> C)

    `id` may name several fields (a composite native id, e.g. MedReason's dataset_name + id_in_dataset,
    whose id_in_dataset repeats across its source sets). A `where` value is a tuple of allowed values or a
    compiled regex that the value's text must match (case as the pattern says).
    """

    id: str | tuple[str, ...] | None = None
    prompt: str | tuple[str, ...] | None = None
    conversation: str | None = None
    system: str | None = None
    context: str | None = None
    reasoning: str | None = None
    response: str | None = None
    gold_answer: str | None = None
    gold_format: str = "text"
    options: str | tuple[str, ...] | None = None
    options_in_prompt: bool = False
    labeled_prompt: bool = False
    language: str = "en"
    meta: tuple[str, ...] = ()
    where: tuple[tuple[str, tuple[Any, ...] | re.Pattern], ...] = field(default_factory=tuple)

    def fields_used(self) -> list[str]:
        out: list[str] = []
        for value in (self.id, self.prompt, self.conversation, self.system, self.context,
                      self.reasoning, self.response, self.gold_answer, self.options):
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, tuple):
                out.extend(value)
        out.extend(self.meta)
        out.extend(path for path, _ in self.where)
        return out


_MISSING = object()


def get_path(record: Any, path: str, default: Any = None) -> Any:
    """Read a dotted path; integer parts index lists (`choices.0.text`, `-1` for the last)."""
    cur = record
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part, _MISSING)
        elif isinstance(cur, Sequence) and not isinstance(cur, (str, bytes)):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                cur = _MISSING
        else:
            cur = _MISSING
        if cur is _MISSING:
            return default
    return cur


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _as_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if _non_finite(value):  # JSON's NaN/Infinity (or a pandas NaN): no text to write, not the string "nan"
            raise RowRejected(Reason.NON_FINITE, f"{what} is {value}")
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise RowRejected(Reason.WRONG_TYPE, f"{what} is {type(value).__name__}, expected text")


# --- think / answer -------------------------------------------------------------------------

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def split_think(text: str) -> tuple[str | None, str, bool]:
    """Split `<think>reasoning</think>answer`. Returns (reasoning, answer, closed).

    A text with no think block gives (None, text, True). An opened but never closed block (a cut-off
    trace) gives (reasoning-so-far, "", False): the caller decides what to do with it.
    """
    start = text.find(_THINK_OPEN)
    if start == -1:
        end = text.find(_THINK_CLOSE)
        if end == -1:
            return None, text.strip(), True
        # Some models omit the opening tag (the chat template adds it).
        return text[:end].strip(), text[end + len(_THINK_CLOSE):].strip(), True
    end = text.find(_THINK_CLOSE, start)
    if end == -1:
        return text[start + len(_THINK_OPEN):].strip(), "", False
    return text[start + len(_THINK_OPEN):end].strip(), text[end + len(_THINK_CLOSE):].strip(), True


def assistant_content(reasoning: str | None, answer: str) -> str:
    """The assistant turn of the contract: `<think>\\n…\\n</think>\\n\\n` + answer when there is reasoning."""
    if reasoning:
        return f"{_THINK_OPEN}\n{reasoning.strip()}\n{_THINK_CLOSE}\n\n{answer.strip()}".rstrip()
    return answer.strip()


# --- options ----------------------------------------------------------------------------------

def parse_options(value: Any) -> dict[str, str] | None:
    """Options in any of the shapes the sources use -> {letter: text}.

    Accepts a mapping, a list of strings (lettered A, B, ...), a list of {label,text} /
    {letter,content} / {key,value} dicts, or a string holding a JSON/Python list or dict.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except RecursionError:
            raise RowRejected(Reason.TOO_DEEP, f"options is a string of {len(text)} characters holding JSON nested "
                                               "beyond the recursion limit") from None
        except ValueError:
            try:
                value = ast.literal_eval(text)
            except (RecursionError, MemoryError):  # the parser's own stack ("too many nested parentheses")
                raise RowRejected(Reason.TOO_DEEP, f"options is a string of {len(text)} characters nested "
                                                   "beyond the parser's limit") from None
            except (ValueError, SyntaxError, TypeError):
                lines = options_text_block(text)
                if lines is None:
                    raise RowRejected(Reason.WRONG_TYPE, "options is a string that holds no list, mapping or "
                                                         "'A. …' lines")
                value = lines
    if isinstance(value, Mapping):
        out = {str(k).strip(): _as_text(v, "option") or "" for k, v in value.items()}
    elif isinstance(value, Sequence):
        out = {}
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                label = item.get("label", item.get("letter", item.get("key")))
                text = item.get("text", item.get("content", item.get("value")))
                if label is None or text is None:
                    raise RowRejected(Reason.WRONG_TYPE, f"option {i} has no label/text")
                out[str(label).strip()] = _as_text(text, "option") or ""
            else:
                if i >= len(LETTERS):
                    raise RowRejected(Reason.WRONG_TYPE, "more than 26 options")
                out[LETTERS[i]] = _as_text(item, "option") or ""
    else:
        raise RowRejected(Reason.WRONG_TYPE, f"options is {type(value).__name__}")
    out = _reletter(out)
    # Placeholders such as "n/a" in AfriMed-QA's 5th slot are not options.
    out = {k: v for k, v in out.items() if v.strip() and v.strip().lower() not in {"n/a", "na"}}
    return out or None


_NUMBERED_KEY = re.compile(r"^(?:option\s*)?(\d+)$", re.I)


def _reletter(options: dict[str, str]) -> dict[str, str]:
    """Numbered keys, 1.. or option1.. (ARC, AfriMed-QA) -> the letter of their number (option3 -> C), so a
    gold answer given as a key names the same letter; other keys stay."""
    nums = [_NUMBERED_KEY.match(k) for k in options]
    if not options or not all(nums):
        return options
    numbers = [int(m.group(1)) for m in nums]
    if len(set(numbers)) != len(numbers) or not all(1 <= n <= len(LETTERS) for n in numbers):
        return options
    return {LETTERS[n - 1]: v for n, v in zip(numbers, options.values())}


_CHOICES_BLOCK = re.compile(r"\n?\s*Answer Choices:\s*(?P<body>\(A\).*)$", re.S)
_PAREN_OPTION = re.compile(r"\(([A-Z])\)\s*")
_LINE_OPTION = re.compile(r"^\s*Option\s+([A-Z])\s*[:.)]\s*(.*)$", re.M)
# A trailing block of "A. text" / "B) text" / "C: text" lines (m23k prompts, Nemotron science questions).
_LETTER_LINE = re.compile(r"^[ \t]*([A-Z])[.):][ \t]+(\S.*)$")


def _letter_block(lines: list[str]) -> dict[str, str] | None:
    """Lines that are all `A. …`, `B. …`, … in order -> {letter: text}; None otherwise (or under 2 lines)."""
    matches = [_LETTER_LINE.match(line) for line in lines]
    if len(lines) < 2 or not all(matches):
        return None
    if [m.group(1) for m in matches] != list(LETTERS[: len(matches)]):
        return None
    return {m.group(1): m.group(2).strip() for m in matches}


def _trailing_letter_lines(text: str) -> tuple[str, dict[str, str]] | None:
    lines = text.rstrip().split("\n")
    n = 0
    while n < len(lines) and _LETTER_LINE.match(lines[len(lines) - 1 - n]):
        n += 1
    block = _letter_block(lines[len(lines) - n:]) if n else None
    stem = "\n".join(lines[: len(lines) - n]).rstrip()
    return (stem, block) if block and stem else None


_CHOICES_HEADER = re.compile(r"^\s*(?:Answer\s+)?(?:Choices|Options)\s*:\s*\n", re.I)


def options_text_block(text: str) -> dict[str, str] | None:
    """A string that is only option lines (`A. …\nB. …`, optionally under an `Answer Choices:` header, as in
    MedReason's `options` column) -> {letter: text}; None when it is not."""
    return _letter_block(_CHOICES_HEADER.sub("", text.strip(), count=1).strip().split("\n"))


def options_from_text(text: str) -> tuple[str, dict[str, str] | None]:
    """Split options written inside a question: `Answer Choices: (A) … (B) …`, `Option A: …` lines, or a
    trailing block of `A. …` lines.

    Returns (stem, options); (text, None) when no options block is found.
    """
    m = _CHOICES_BLOCK.search(text)
    if m:
        body = m.group("body")
        parts = _PAREN_OPTION.split(body)
        # parts = ["", "A", "text", "B", "text", ...]
        letters = parts[1::2]
        texts = [t.strip() for t in parts[2::2]]
        if letters and letters == list(LETTERS[: len(letters)]):
            return text[: m.start()].rstrip(), dict(zip(letters, texts))
    lines = list(_LINE_OPTION.finditer(text))
    if len(lines) >= 2:
        letters = [x.group(1) for x in lines]
        if letters == list(LETTERS[: len(letters)]):
            stem = text[: lines[0].start()].rstrip()
            return stem, {x.group(1): x.group(2).strip() for x in lines}
    trailing = _trailing_letter_lines(text)
    if trailing:
        return trailing
    return text, None


def render_options(options: Mapping[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options.items())


_ANSWER_TAG = re.compile(r"^\s*(?:the\s+)?(?:correct\s+)?answer\s*(?:is)?\s*[:\-]?\s*\(?([A-Z])\)?\s*\.?\s*$", re.I)


def gold_to_letter(value: Any, fmt: str, options: Mapping[str, str] | None) -> str | None:
    """Normalise a gold answer into an option letter when the row has options."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise RowRejected(Reason.NON_FINITE, f"gold answer is {value}")
    if fmt == "index0":
        try:
            idx = int(value)
        except (TypeError, ValueError):
            raise RowRejected(Reason.WRONG_TYPE, f"gold index {value!r} is not an integer")
        if not 0 <= idx < len(LETTERS):
            raise RowRejected(Reason.WRONG_TYPE, f"gold index {idx} out of range")
        return _among_options(LETTERS[idx], options, f"gold index {idx}")
    if isinstance(value, list):
        if len(value) != 1:
            raise RowRejected(Reason.WRONG_TYPE, f"gold answer list has {len(value)} items")
        value = value[0]
    text = _as_text(value, "gold_answer")
    if text is None:
        return None
    text = text.strip()
    if fmt == "letter":
        letter = text.strip("() .").upper()
        if len(letter) == 1 and letter in LETTERS:
            return _among_options(letter, options, f"gold answer {text[:40]!r}")
        # ARC labels some questions' choices 1-4 instead of A-D (parse_options re-letters them).
        if letter.isdigit() and options and 1 <= int(letter) <= len(options):
            return list(options)[int(letter) - 1]
        raise RowRejected(Reason.BAD_GOLD, f"gold answer {text[:40]!r} is not a letter")
    if fmt == "answer_tag":
        m = _ANSWER_TAG.match(text)
        if m:
            return _among_options(m.group(1).upper(), options, f"gold answer {text[:40]!r}")
        raise RowRejected(Reason.BAD_GOLD, f"gold answer {text[:40]!r} has no 'Answer: (X)'")
    if fmt == "option_key":
        # "option3" -> "C"; AfriMed-QA's multi-answer MCQs list several keys: "option1,option3" -> "A,C".
        letters = []
        for key in text.split(","):
            m = _NUMBERED_KEY.match(key.strip())
            letter = LETTERS[int(m.group(1)) - 1] if m and 1 <= int(m.group(1)) <= len(LETTERS) else None
            if letter is None or (options is not None and letter not in options):
                raise RowRejected(Reason.BAD_GOLD, f"gold answer {text[:40]!r} names no option")
            letters.append(letter)
        return ",".join(letters)
    if fmt == "option_text":
        if options:
            norm = fold_text(text)
            for letter, opt in options.items():
                if fold_text(opt) == norm:
                    return letter
        raise RowRejected(Reason.BAD_GOLD, f"gold answer {text[:40]!r} matches no option")
    return text or None  # an empty reference is no reference


def _among_options(letter: str, options: Mapping[str, str] | None, what: str) -> str:
    """A gold letter must name one of the row's options (a `Z` with options A/B is a broken row, not a gold)."""
    if options is not None and letter not in options:
        raise RowRejected(Reason.GOLD_NOT_IN_OPTIONS, f"{what} names {letter}, not one of the options "
                                                      f"{', '.join(list(options)[:10])}")
    return letter


def fold_text(text: str) -> str:
    # Real rows carry stray quotes and full stops around otherwise identical option text.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).strip(" .\"'")


# --- prompts ----------------------------------------------------------------------------------

_LABELS = re.compile(r"^(CONTEXT|QUESTION|Question|Context)\s*:\s*", re.M)


def split_labeled(text: str) -> dict[str, str]:
    """`CONTEXT: … QUESTION: …` -> {"context": …, "question": …}; unlabeled text is the question."""
    parts = _LABELS.split(text)
    out: dict[str, str] = {}
    if parts[0].strip():
        out["question"] = parts[0].strip()
    for label, body in zip(parts[1::2], parts[2::2]):
        out[label.lower()] = body.strip()
    return out


_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                 "system": "system", "model": "assistant", "bot": "assistant"}


def normalize_conversation(turns: Any) -> list[dict[str, str]]:
    """Turns as [{role, content}] or ShareGPT [{from, value}] -> [{role, content}]."""
    if not isinstance(turns, Sequence) or isinstance(turns, (str, bytes)):
        raise RowRejected(Reason.BAD_MESSAGES, f"conversation is {type(turns).__name__}, expected a list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowRejected(Reason.BAD_MESSAGES, f"turn {i} is {type(turn).__name__}")
        role = _ROLE_ALIASES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise RowRejected(Reason.BAD_MESSAGES, f"turn {i} has no known role or text content")
        out.append({"role": role, "content": content})
    return out


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]")


def detect_language(text: str, default: str) -> str:
    """Cheap script check: mostly-CJK text is Chinese, whatever the source's default."""
    sample = text[:2000]
    if not _CJK.search(sample):  # the common case, decided in C
        return default
    letters = len(_LETTER.findall(sample))
    if letters and len(_CJK.findall(sample)) / letters > 0.3:
        return "zh"
    return default


# --- the record -> row mapping ----------------------------------------------------------------

def in_scope(record: Mapping[str, Any], fm: FieldMap) -> str | None:
    """None when the record passes the map's `where` filter, else a detail string."""
    for path, allowed in fm.where:
        value = get_path(record, path)
        ok = (bool(allowed.search(str(value))) if value is not None else False) \
            if isinstance(allowed, re.Pattern) else value in allowed
        if not ok:
            return f"{path}={str(value)[:60]!r}"
    return None


def normalize_record(
    record: Any,
    fm: FieldMap,
    *,
    source: str,
    section: str,
    fallback_native_id: str = "",
    native_prefix: str = "",
) -> dict[str, Any]:
    """Apply a FieldMap to one native record and return a sample row (see core.schema)."""
    if not isinstance(record, (Mapping, list)):
        raise RowRejected(Reason.WRONG_TYPE, f"record is {type(record).__name__}, expected an object or list")
    out_of_scope = in_scope(record, fm)
    if out_of_scope:
        raise RowRejected(Reason.OUT_OF_SCOPE, out_of_scope)

    meta: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    options: dict[str, str] | None = None

    if fm.conversation:
        turns = normalize_conversation(get_path(record, fm.conversation))
        user_turns = [t for t in turns if t["role"] == "user"]
        if not user_turns:
            raise RowRejected(Reason.MISSING_PROMPT, "conversation has no user turn")
        prompt = user_turns[-1]["content"]
        # Assistant turns with reasoning take the contract's form (`<think>\n…\n</think>\n\nanswer`), also when
        # the source omits the opening tag (SYNTHETIC-1's generator prefilled it).
        messages = [_assistant_turn(t["content"], None, meta) if t["role"] == "assistant"
                    and split_think(t["content"])[0] is not None else t for t in turns]
        extra = _as_text(get_path(record, fm.response), fm.response) if fm.response else None
        if extra is not None and turns[-1]["role"] != "assistant":
            reasoning = _as_text(get_path(record, fm.reasoning), fm.reasoning) if fm.reasoning else None
            messages.append(_assistant_turn(extra, reasoning, meta))
    else:
        if fm.prompt is None:
            raise RowRejected(Reason.MISSING_PROMPT, "no prompt field mapped")
        paths = (fm.prompt,) if isinstance(fm.prompt, str) else fm.prompt
        pieces = [_as_text(get_path(record, p), p) for p in paths]
        if all(p is None for p in pieces):
            raise RowRejected(Reason.MISSING_PROMPT, f"field {paths[0]!r} is absent or null")
        prompt = "\n\n".join(p for p in pieces if p)

    if fm.labeled_prompt:
        parts = split_labeled(prompt)
        if "context" in parts:
            meta["context"] = parts["context"]
        prompt = parts.get("question", "")
    if fm.context:
        ctx = get_path(record, fm.context)
        if isinstance(ctx, Mapping):  # PubMedQA on the hub nests {contexts: [...], labels: [...]}
            ctx = ctx.get("contexts")
        ctx_text = _as_text(ctx, fm.context)
        if ctx_text:
            meta["context"] = ctx_text

    if fm.options is not None:
        if isinstance(fm.options, tuple):
            options = parse_options([get_path(record, p) for p in fm.options if get_path(record, p) is not None])
        else:
            options = parse_options(get_path(record, fm.options))
    if fm.options_in_prompt:
        stem, parsed = options_from_text(prompt)
        if parsed:
            prompt = stem
            options = options or parsed

    if not prompt or not prompt.strip():
        raise RowRejected(Reason.EMPTY_PROMPT, "prompt is empty after normalisation")

    question = prompt.strip()
    if not fm.conversation:
        user_text = question
        if options:
            meta["question"] = question
            user_text = f"{question}\n\n{render_options(options)}"
        if "context" in meta:
            user_text = f"{meta['context']}\n\n{user_text}"
        system = _as_text(get_path(record, fm.system), fm.system) if fm.system else None
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user_text})
        prompt = user_text

        response = _as_text(get_path(record, fm.response), fm.response) if fm.response else None
        reasoning = _as_text(get_path(record, fm.reasoning), fm.reasoning) if fm.reasoning else None
        if response is not None or reasoning:
            messages.append(_assistant_turn(response, reasoning, meta))

    gold_raw = get_path(record, fm.gold_answer) if fm.gold_answer else None
    gold = gold_to_letter(gold_raw, fm.gold_format if options or fm.gold_format == "text" else "text", options)

    for path in fm.meta:
        value = get_path(record, path)
        if value is not None:
            meta[path] = value

    native = _native_id(record, fm.id)
    if native is None or native == "":
        native = fallback_native_id or content_key(prompt, messages[-1]["content"] if messages else "")
    native = f"{native_prefix}{native}"
    try:
        # allow_nan=False: JSON has no NaN (DuckDB's JSON column would refuse the whole partition's swap).
        meta_json = json.dumps(meta, ensure_ascii=False, default=str, allow_nan=False) if meta else None
    except RecursionError:
        raise RowRejected(Reason.TOO_DEEP, "a meta field is nested beyond the recursion limit") from None
    except (TypeError, ValueError) as exc:
        if "Out of range float" in str(exc):
            raise RowRejected(Reason.NON_FINITE, "a meta field holds NaN or Infinity: "
                              + ", ".join(k for k, v in meta.items() if _holds_non_finite(v))) from None
        raise RowRejected(Reason.WRONG_TYPE, f"meta not serialisable: {exc}")
    return {
        "id": make_row_id(source, native),
        "source": source,
        "section": section,
        "prompt": prompt,
        "messages": messages,
        "gold_answer": gold,
        "options": list(options.items()) if options else None,
        "language": detect_language(prompt, fm.language),
        "meta": meta_json,
    }


def _assistant_turn(response: str | None, reasoning: str | None, meta: dict[str, Any]) -> dict[str, str]:
    """An assistant turn in the contract's form from a response (maybe with inline `<think>`) and/or a separate
    reasoning text. A cut-off trace (think never closed) stays open and is marked `think_closed: false`."""
    inner, answer, closed = split_think(response or "")
    reasoning = reasoning or inner
    if not closed:
        meta["think_closed"] = False
        return {"role": "assistant", "content": f"{_THINK_OPEN}\n{(reasoning or '').strip()}"}
    return {"role": "assistant", "content": assistant_content(reasoning, answer)}


def any_nested(value: Any, test: Callable[[Any], bool]) -> bool:
    """Whether `test` holds for `value` or anything nested in it (mapping values, list/tuple items); iterative, so
    a deeply nested record cannot exhaust the stack."""
    stack = [value]
    while stack:
        v = stack.pop()
        if test(v):
            return True
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


def _holds_non_finite(value: Any) -> bool:
    return any_nested(value, _non_finite)


def _native_id(record: Any, id_path: str | tuple[str, ...] | None) -> Any:
    """The record's own id; None when absent. A NaN id (a pandas-written Parquet's missing value) is absent too:
    as the text "nan" every such row would share one id."""
    if id_path is None:
        return None
    if isinstance(id_path, str):
        value = get_path(record, id_path)
        return None if isinstance(value, float) and not math.isfinite(value) else value
    parts = [get_path(record, p) for p in id_path]
    if any(p is None or p == "" or _non_finite(p) for p in parts):
        return None
    return "/".join(str(p) for p in parts)


def as_rejection(exc: Exception) -> RowRejected:
    """What one malformed record's exception means for the ledger: its own `RowRejected`; `too_deep` for a record
    nested beyond the recursion limit; `record_error` (type: message) for anything unexpected. The callers catch
    `Exception` around one record's conversion, so one bad record never stops a partition."""
    if isinstance(exc, RowRejected):
        return exc
    if isinstance(exc, RecursionError):
        return RowRejected(Reason.TOO_DEEP, "the record is nested beyond the recursion limit")
    return RowRejected(Reason.RECORD_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}")


def required_roots(fm: FieldMap) -> set[str]:
    """Top-level fields a record must have for this map to find its prompt (absent from every record = a
    wrong map, not bad rows)."""
    paths = [fm.conversation] if fm.conversation else (
        [fm.prompt] if isinstance(fm.prompt, str) else list(fm.prompt or ()))
    return {p.split(".")[0] for p in paths}
