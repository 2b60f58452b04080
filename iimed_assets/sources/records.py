"""The hub conversion: one native hub record -> the sample rows a full run writes for it.

`rows_from_record(source, record)` is the public face (`from iimed_assets.sources import rows_from_record`);
`hub_outcomes` is what the loader calls, and it is the same conversion: the rows it returns are exactly the
rows `rows_from_record` returns, and its `RowRejected` items are what goes to the row ledger (an out-of-scope
record included, so rows in = rows out + ledger still holds).
"""

from __future__ import annotations

from typing import Any

from iimed_assets.core.adapters import get_adapter
from iimed_assets.core.normalize import RowRejected, as_rejection, normalize_record, required_roots
from iimed_assets.core.schema import Reason
from iimed_assets.sources.registry import SourceSpec, get_source


def hub_outcomes(spec: SourceSpec, record: Any) -> list[dict | RowRejected]:
    """Every outcome of one native record, in order: a sample row, or a `RowRejected` for the ledger.

    A plain entry gives one outcome. An entry with an adapter may give several (ApolloCorpus: one per
    question/answer pair, each with its own id).
    """
    try:
        parts = get_adapter(spec.adapter).fn(record) if spec.adapter else [record]
    except Exception as exc:  # noqa: BLE001 - one record's failure is its ledger row (as_rejection)
        return [as_rejection(exc)]
    if not parts:
        return [RowRejected(Reason.MISSING_PROMPT, "the record holds no sample")]
    out: list[dict | RowRejected] = []
    for part in parts:
        if isinstance(part, RowRejected):
            out.append(part)
            continue
        try:
            out.append(normalize_record(part, spec.fields, source=spec.name, section=spec.section))
        except Exception as exc:  # noqa: BLE001
            out.append(as_rejection(exc))
    return out


def rows_from_record(source: str, record: Any) -> list[dict]:
    """The sample rows the hub path writes for one native record of `source`, exactly as in the hub files
    (a dict; for ApolloCorpus the list of strings).

    Returns `[]` for a record outside the entry's scope (the run ledgers it as `out_of_scope`). Raises
    `RowRejected` (reason + detail, as in the ledger) for a record that yields no row for another reason.
    A multi-sample record with some bad parts returns its good rows (the bad parts go to the ledger in a run).
    """
    outcomes = hub_outcomes(get_source(source), record)
    rows = [o for o in outcomes if isinstance(o, dict)]
    if rows:
        return rows
    rejected = [o for o in outcomes if isinstance(o, RowRejected)]
    if all(r.reason == Reason.OUT_OF_SCOPE for r in rejected):
        return []
    raise next(r for r in rejected if r.reason != Reason.OUT_OF_SCOPE)


def required_fields(spec: SourceSpec) -> set[str]:
    """Native top-level fields every hub record of `spec` must have (absent from all = a wrong entry)."""
    if spec.adapter:
        return set(get_adapter(spec.adapter).requires)
    return required_roots(spec.fields)
