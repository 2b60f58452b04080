"""Final-answer extraction for multiple-choice responses (section 2's verification).

    extract_choice(response, options) -> "B" | None

Reads only the text after `</think>` (a response whose think block never closes has no answer). It looks,
from the strongest signal to the weakest, for a boxed letter, an explicit "the answer is X" / "Answer: (X)"
statement, a reply that is just a letter (optionally with its option text), and finally an exact mention of
exactly one option's text. It returns None rather than guess: two different committed letters, or nothing
that commits, give None.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence

_LETTERS = string.ascii_uppercase


def _options_map(options: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    return {_LETTERS[i]: str(v) for i, v in enumerate(options)}


def answer_part(response: str) -> str | None:
    """The text after the last `</think>`; None when a think block opens and never closes."""
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    if "<think>" in response:
        return None  # cut off while thinking: no final answer
    return response


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[*_`$\\]", "", text)
    return " ".join(re.sub(r"[^\w%./+-]+", " ", text).split())


_L = r"([A-Z])"
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?" + _L + r"\)?(?:[\s.:)}]|$)")
_STATEMENT = re.compile(
    r"(?:final\s+answer|correct\s+(?:answer|option|choice)|best\s+(?:answer|option|choice)|answer)"
    r"\s*(?:is|would\s+be|should\s+be|:)?\s*[:\-–]?\s*(?:option\s+|choice\s+)?[*_\s]*\(?\s*" + _L + r"\s*\)?[*_]*"
    r"(?=[\s.,:;)!]|$)",
    re.I,
)
_IS_CORRECT = re.compile(r"(?:^|[\s*(])(?:option\s+)?" + _L + r"\)?[*_]*\s+is\s+(?:the\s+)?(?:correct|right|best)\b")
_TRAILING_PAREN = re.compile(r"\(\s*(?:option\s+)?" + _L + r"\s*\)[*_]*\s*[.!]?[*_]*\s*$", re.I)
_BARE = re.compile(r"^[\s*_>#]*(?:\*\*)?\(?\s*" + _L + r"\s*\)?(?:\*\*)?\s*(?:[.:)\-–]\s*(?P<rest>.*))?$", re.S)


def extract_choice(response: str, options: Mapping[str, str] | Sequence[str] | None = None) -> str | None:
    """The option letter the response commits to as its final answer, or None if it does not commit to one."""
    if not response:
        return None
    opts = _options_map(options)
    valid = set(opts) if opts else set(_LETTERS)
    answer = answer_part(response)
    if answer is None:
        return None
    answer = answer.strip()
    if not answer:
        return None

    def decide(letters: list[str]) -> str | None:
        letters = [x for x in letters if x in valid]
        return letters[-1] if letters and len(set(letters)) == 1 else (letters[-1] if letters and
                                                                        _last_is_final(letters) else None)

    boxed = [m.group(1).upper() for m in _BOXED.finditer(answer)]
    if [b for b in boxed if b in valid]:
        return decide(boxed)

    # The whole reply is a letter, maybe with its option text: "C", "**C**", "(C) Metformin", "C. Metformin".
    m = _BARE.match(answer)
    if m and m.group(1) in valid and _rest_matches(m.group("rest"), opts.get(m.group(1))):
        return m.group(1)

    stated = [m.group(1).upper() for m in _STATEMENT.finditer(answer) if m.group(1).isupper()]
    if [s for s in stated if s in valid]:
        return decide(stated)
    correct = [m.group(1) for m in _IS_CORRECT.finditer(answer)]
    if [c for c in correct if c in valid]:
        return decide(correct)
    # The reply ends on its choice: "... is **wrist extension (D)**."
    m = _TRAILING_PAREN.search(answer)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()

    # The first line alone is a letter ("B\n\nExplanation: ...").
    first = answer.splitlines()[0]
    m = _BARE.match(first)
    if m and m.group(1) in valid and _rest_matches(m.group("rest"), opts.get(m.group(1))):
        return m.group(1)

    # Last resort: the answer names exactly one option's full text.
    if opts:
        folded = _fold(answer)
        hits = [k for k, v in opts.items() if len(_fold(v)) >= 3 and _contains_phrase(folded, _fold(v))]
        if len(hits) == 1:
            return hits[0]
    return None


def _last_is_final(letters: list[str]) -> bool:
    # Several statements that disagree: trust the last one only when the response ends on it twice in a
    # row ("... so the answer is B. Answer: B"), otherwise it has not clearly committed.
    return len(letters) >= 2 and letters[-1] == letters[-2]


def _rest_matches(rest: str | None, option_text: str | None) -> bool:
    """After a bare letter, allow nothing, the option's own text, or an explanation that starts after it."""
    if not rest or not rest.strip():
        return True
    if option_text is None:
        return len(rest.strip()) < 200 or "\n" in rest
    r, o = _fold(rest), _fold(option_text)
    return r.startswith(o[: max(3, min(len(o), 40))]) or o.startswith(r[:40]) or "\n" in rest.strip()


def _contains_phrase(haystack: str, needle: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", haystack) is not None
