"""Field coverage of sample rows: which share of a partition has reasoning, options, a gold answer, a
response, a context. A field map that points at the wrong column does not fail: it writes empty fields.
Counting them per partition, against what the source is declared to deliver, makes that loud.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from iimed_assets.core.normalize import split_think

FIELDS = ("reasoning", "response", "options", "gold", "context")


def _last_assistant(row: Mapping[str, Any]) -> str | None:
    """The row's response: its last turn when that is an assistant turn (earlier assistant turns are context,
    e.g. an Apollo dialogue before the question a row asks)."""
    messages = row.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        return messages[-1].get("content") or ""
    return None


def fields_present(row: Mapping[str, Any]) -> dict[str, bool]:
    """For one sample row: does it carry each coverage field?

    reasoning: the last assistant turn holds a non-empty `<think>` block; response: it holds a non-empty answer
    after the reasoning (a cut-off trace has none); options: at least one option; gold: a non-empty gold answer;
    context: a passage in `meta.context` (PubMedQA's abstract).
    """
    content = _last_assistant(row)
    reasoning = answer = None
    if content is not None:
        reasoning, answer, closed = split_think(content)
        answer = answer if closed else ""
    meta = row.get("meta")
    context = False
    if meta:
        try:
            context = bool((json.loads(meta) if isinstance(meta, str) else meta).get("context"))
        except (ValueError, AttributeError):
            context = False
    gold = row.get("gold_answer")
    return {
        "reasoning": bool(reasoning and reasoning.strip()),
        "response": bool(answer and answer.strip()),
        "options": bool(row.get("options")),
        "gold": gold is not None and str(gold).strip() != "",
        "context": context,
    }


@dataclass
class FieldCoverage:
    """Streaming counts of rows with each field, and a few rows without it (to show in a failed check)."""

    examples_per_field: int = 3
    rows: int = 0
    present: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    missing_examples: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {f: [] for f in FIELDS})

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows += 1
        for name, has in fields_present(row).items():
            if has:
                self.present[name] += 1
            elif len(self.missing_examples[name]) < self.examples_per_field:
                last = _last_assistant(row)
                self.missing_examples[name].append(
                    (row.get("id", ""), " ".join(str(row.get("prompt", "")).split())[:120]
                     + (f" → {' '.join(last.split())[:80]}" if last else "")))

    def shares(self) -> dict[str, float]:
        return {name: (round(n / self.rows, 4) if self.rows else 0.0) for name, n in self.present.items()}

    def shortfalls(self, expects: Mapping[str, float]) -> list[tuple[str, float, float]]:
        """(field, measured share, declared minimum) for every declared field below its minimum."""
        shares = self.shares()
        unknown = set(expects) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown coverage fields {sorted(unknown)}; known: {FIELDS}")
        return [(name, shares[name], minimum) for name, minimum in expects.items() if shares[name] < minimum]
