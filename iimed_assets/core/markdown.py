"""Markdown tables: what the Dagster UI metadata and the dataset card render. Pure."""

from __future__ import annotations

from typing import Any


def md_cell(value: Any, width: int = 140) -> str:
    """One table cell: whitespace collapsed, clipped to `width` characters, pipes escaped."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[tuple], width: int = 140) -> str:
    if not rows:
        return "_(no rows)_"
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(md_cell(v, width) for v in row) + " |")
    return "\n".join(out)
