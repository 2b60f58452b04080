"""Per-source record adapters: the native hub record of an odd source -> the record(s) its field map reads.

Most sources need only a `FieldMap`. A few hold their samples in a shape a map cannot express: one native
item that is several samples (ApolloCorpus: `[q1, a1, q2, a2, ...]`), options written as a text block
(MedReason), answers wrapped in tags (AM-DeepSeek-R1-Distilled), a gold answer with an explanation tail
(MedReason's MedMCQA rows). An adapter takes the native record exactly as it is in the hub files and returns
a list whose items are records in the shape of the entry's `FieldMap` or `RowRejected` (a part of the item
that cannot become a row, e.g. Apollo's unpaired last question), so nothing is dropped silently.

Pure Python, no Dagster. Each adapter names the native fields it needs (`requires`): a record that lacks
them all is a wrong registry entry, not a bad row (see `sources.ingest`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from iimed_assets.core.normalize import RowRejected, fold_text, normalize_conversation, parse_options, split_think
from iimed_assets.core.schema import Reason, content_key

Outcome = Any  # a record (dict) for the field map, or a RowRejected for a part that cannot become a row


@dataclass(frozen=True)
class Adapter:
    name: str
    fn: Callable[[Any], list[Outcome]]
    requires: tuple[str, ...] = ()  # native top-level fields every record must have ("a|b": either one)


# --- ApolloCorpus: one item = one conversation [q1, a1, q2, a2, ...] ------------------------------------

def apollo_qa_pairs(item: Any) -> list[Outcome]:
    """`[q1, a1, q2, a2, ...]` -> one record per question/answer pair.

    ApolloCorpus' QA files hold one list of strings per item (Apollo README: "data_type==qa: list of qa
    pairs"); Apollo's own trainer reads an item as one conversation (even index = user, odd = assistant).
    Pair k becomes a row whose messages are the 2k earlier turns plus question k, with answer k as the gold
    answer: a follow-up question keeps its dialogue, and a single-pair item is a plain question. Its id is the
    hash of the conversation up to answer k, so it is stable and distinct per pair. An unpaired last question
    becomes a ledger row, not a silent drop.
    """
    if not isinstance(item, list) or not all(isinstance(x, str) for x in item):
        raise RowRejected(Reason.WRONG_TYPE, f"Apollo item is {type(item).__name__}, expected a list of strings")
    if not item:
        raise RowRejected(Reason.MISSING_PROMPT, "empty Apollo item")
    pairs = len(item) // 2
    out: list[Outcome] = []
    for k in range(pairs):
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                 for i, text in enumerate(item[: 2 * k + 1])]
        out.append({"messages": turns, "answer": item[2 * k + 1], "pair": k, "pairs": pairs,
                    "pair_id": content_key(*item[: 2 * k + 2])})
    if len(item) % 2:
        out.append(RowRejected(Reason.UNPAIRED, f"item has {len(item)} strings: question {pairs} has no answer"))
    return out


# --- AM-DeepSeek-R1-Distilled / AM-Qwen3-Distilled: <think>…</think><answer>…</answer> ------------------

_ANSWER_TAGS = re.compile(r"^\s*<answer>\s*(.*?)\s*</answer>\s*$", re.S)


def strip_answer_tags(text: str) -> str:
    """`<answer>X</answer>` -> `X` (the II-Medical output format has no answer tags)."""
    m = _ANSWER_TAGS.match(text)
    return m.group(1) if m else text


def am_messages(record: Any) -> list[Outcome]:
    """The a-m-team distilled sets: turns `{role|from, content|value, info}`, under `messages`
    (AM-DeepSeek-R1-Distilled-1.4M) or `conversations` (AM-Qwen3-Distilled, with a top-level `system` that
    the card says is not used in training). An assistant turn is `<think>R</think>\n<answer>A</answer>`, and
    its `info` repeats R and A as `think_content` / `answer_content`: it becomes `<think>R</think>A`. The
    user turn's `info` (source, reference_answer, category, instruction_constrain) is kept.
    """
    if not isinstance(record, Mapping):
        raise RowRejected(Reason.WRONG_TYPE, f"record is {type(record).__name__}")
    turns = record.get("messages", record.get("conversations"))
    normalize_conversation(turns)  # raises bad_messages for a malformed list
    messages = []
    user_info: Mapping[str, Any] = {}
    for turn in turns:
        role = normalize_conversation([turn])[0]["role"]
        content = turn.get("content", turn.get("value"))
        info = turn.get("info") if isinstance(turn.get("info"), Mapping) else {}
        if role == "assistant":
            think, answer = info.get("think_content"), info.get("answer_content")
            if not (isinstance(think, str) and isinstance(answer, str)):
                think, answer, closed = split_think(content)
                if not closed:
                    think, answer = None, content
            answer = strip_answer_tags(answer)
            content = f"<think>\n{think.strip()}\n</think>\n\n{answer.strip()}" if think and think.strip() \
                else answer.strip()
        elif role == "user":
            user_info = info
        messages.append({"role": role, "content": content})
    return [{"messages": messages, **{k: user_info.get(k) for k in
                                      ("source", "reference_answer", "category", "instruction_constrain")}}]


# --- MedReason: options as one string, per-source answer formats ---------------------------------------

_EXPLANATION_TAIL = re.compile(r"\.?\s*Explanation\s*:.*$", re.S)
_FINAL_DECISION = re.compile(r"^\s*The final decision is\s*:?\s*(yes|no|maybe)\b", re.I)
_LETTER_PREFIX = re.compile(r"^\s*\(([A-Z])\)\s*")


def medreason_record(record: Any) -> list[Outcome]:
    """MedReason (`ours_quality_33000.jsonl`): options -> {letter: text}; the answer -> the option letter when it
    names an option, else cleaned text; the original answer is kept as `answer_text`.

    Answer formats per source set (MedReason src/data_generation/data/dataset.py): MedMCQA "text. Explanation:
    …", PubMedQA "The final decision is: yes. <long answer>", MedXpertQA "(C) text", MedQA/MMLU option text,
    huatuo free text.
    """
    if not isinstance(record, Mapping):
        raise RowRejected(Reason.WRONG_TYPE, f"record is {type(record).__name__}")
    raw = record.get("answer")
    options = parse_options(record.get("options")) if record.get("options") else None
    answer = raw.strip() if isinstance(raw, str) else raw
    if isinstance(answer, str):
        decision = _FINAL_DECISION.match(answer)
        prefixed = _LETTER_PREFIX.match(answer)
        if decision:
            answer = decision.group(1).lower()
        elif prefixed and options and prefixed.group(1) in options:
            answer = prefixed.group(1)
        else:
            answer = _EXPLANATION_TAIL.sub("", answer).strip()
        if options and answer not in options:
            folded = {fold_text(v): k for k, v in options.items()}
            answer = folded.get(fold_text(answer), answer)
    return [{**record, "options": options, "answer": answer, "answer_text": raw}]


# --- LiveQA-Med TREC 2017 test (hyesunyun/liveqa_medical_trec2017) --------------------------------------

def liveqa_trec2017(record: Any) -> list[Outcome]:
    """The question is NIST's paraphrase (empty in 3 rows: NLM's summary instead), as the benchmark copies
    present it; the consumer's original message is kept; the gold answer is the first reference answer."""
    if not isinstance(record, Mapping):
        raise RowRejected(Reason.WRONG_TYPE, f"record is {type(record).__name__}")
    question = next((record.get(k) for k in ("NIST_PARAPHRASE", "NLM_SUMMARY", "ORIGINAL_QUESTION_MESSAGE")
                     if isinstance(record.get(k), str) and record.get(k).strip()), None)
    refs = record.get("REFERENCE_ANSWERS") or []
    answer = refs[0].get("ANSWER") if refs and isinstance(refs[0], Mapping) else None
    return [{"QUESTION_ID": record.get("QUESTION_ID"), "question": question, "answer": answer,
             "original_question": record.get("ORIGINAL_QUESTION_MESSAGE")}]


ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    if adapter.name in ADAPTERS:  # pragma: no cover - a typo
        raise ValueError(f"adapter {adapter.name!r} registered twice")
    ADAPTERS[adapter.name] = adapter
    return adapter


register(Adapter("apollo_qa_pairs", apollo_qa_pairs))
register(Adapter("am_messages", am_messages, requires=("messages|conversations",)))
register(Adapter("medreason", medreason_record, requires=("question", "answer", "options")))
register(Adapter("liveqa_trec2017", liveqa_trec2017, requires=("QUESTION_ID", "REFERENCE_ANSWERS")))


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown record adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
