"""The preflight: read the first rows of a source through the same conversion as a full run, and say whether
they come out right (ok/failed, field coverage against the entry's expectations, one example row, the reason
for a failure). `iimed-assets sources --probe` prints it for every source before a two-day job.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from iimed_assets.sources.ingest import ingest
from iimed_assets.sources.loaders import RawItem
from iimed_assets.sources.registry import SourceSpec


@dataclass
class ProbeResult:
    name: str
    origin: str
    ok: bool
    items: int = 0
    rows: int = 0
    ledger: Counter = field(default_factory=Counter)
    out_of_scope: Counter = field(default_factory=Counter)  # the filter's excluded values, e.g. task='Engineering'
    shares: dict[str, float] = field(default_factory=dict)
    expects: dict[str, float] = field(default_factory=dict)
    example: dict[str, Any] | None = None
    reason: str | None = None

    def lines(self, width: int = 160) -> list[str]:
        head = f"{self.name:32} {'ok' if self.ok else 'FAILED':6} {self.origin}"
        out = [head]
        if self.reason:
            out.append(f"    reason: {self.reason}")
        if self.items:
            ledger = ", ".join(f"{r} {n}" for r, n in self.ledger.most_common()) or "none"
            out.append(f"    read {self.items} items -> {self.rows} rows; ledger: {ledger}")
            if self.out_of_scope:
                out.append("    out of scope: " + ", ".join(f"{v} ({n})" for v, n in self.out_of_scope.most_common(8)))
            out.append("    coverage: " + " | ".join(
                f"{f} {v:.0%}" + (f" (min {self.expects[f]:.0%}{'' if v >= self.expects[f] else ' BELOW'})"
                                  if f in self.expects else "") for f, v in self.shares.items()))
        if self.example:
            ex = self.example
            out.append(f"    example: id={ex['id']} turns={','.join(ex['turns'])} gold={ex['gold']!r}")
            out.append(f"      prompt: {ex['prompt']}")
            if ex["options"]:
                out.append("      options: " + _clip("; ".join(f"{k}. {v}" for k, v in ex["options"].items()), width))
            out.append(f"      last turn: {ex['last_turn']}")
        return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _example(row: dict) -> dict[str, Any]:
    last = row["messages"][-1] if row.get("messages") else {}
    return {"id": row["id"], "prompt": _clip(" ".join(row["prompt"].split()), 200),
            "options": dict(row["options"]) if row.get("options") else None, "gold": row.get("gold_answer"),
            "turns": [m["role"] for m in row.get("messages") or []],
            "last_turn": _clip(" ".join(str(last.get("content", "")).split()), 160)}


def probe_source(spec: SourceSpec, read: Callable[[], Iterable[RawItem]], *, origin: str, hub_layout: bool,
                 expects: dict[str, float] | None = None, rows: int = 20) -> ProbeResult:
    """Read at most `rows` native items of `spec` with `read()` and judge what they become.

    Failed: the source cannot be read (no copy, no network, no access, a wrong file name), its records lack the
    fields the entry reads, it yields no row, or a declared field's share is below its minimum.
    """
    import pyarrow.parquet as pq

    expects = spec.expectations(hub_layout) if expects is None else expects
    with tempfile.TemporaryDirectory(prefix=f"probe-{spec.name}-") as tmp:
        try:
            result = ingest(read(), source=spec.name, section=spec.section, staging_dir=Path(tmp), max_rows=rows)
        except Exception as exc:  # every failure to read is a finding of the probe, never a crash of the command
            return ProbeResult(spec.name, origin, ok=False, reason=f"{type(exc).__name__}: {exc}")
        first = pq.ParquetFile(result.rows_path).read_row_group(0).slice(0, 1).to_pylist() \
            if result.rows_staged else []
        ledger = pq.read_table(result.ledger_path, columns=["reason", "detail"]).to_pylist()
    shares = result.coverage.shares()
    probe = ProbeResult(spec.name, origin, ok=True, items=result.rows_read, rows=result.rows_staged,
                        ledger=Counter(result.rejected), shares=shares, expects=expects,
                        out_of_scope=Counter(r["detail"] for r in ledger if r["reason"] == "out_of_scope"),
                        example=_example(first[0]) if first else None)
    short = result.coverage.shortfalls(expects)
    if result.rows_read == 0:
        if not hub_layout and not spec.sample:
            probe.reason = f"no bundled sample ({spec.sample_note})"
        else:
            probe.ok, probe.reason = False, "the source yielded no records"
    elif result.rows_staged == 0:
        probe.ok, probe.reason = False, "no record became a row: " + ", ".join(
            f"{r} {n}" for r, n in result.rejected.most_common(3))
    elif short:
        probe.ok = False
        probe.reason = "field coverage below the entry's declaration: " + ", ".join(
            f"{f} {v:.0%} < {m:.0%}" for f, v, m in short)
    return probe
