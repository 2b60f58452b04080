from __future__ import annotations

import json
from pathlib import Path

import pytest


def logged_checks(instance, run_id: str) -> dict:
    """The check evaluations a run recorded in its instance, by check name. A blocked swap fails the step before a
    MaterializeResult exists, so its checks are only in the event log (not in the in-process result)."""
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {r.event_log_entry.dagster_event.event_specific_data.check_name:
            r.event_log_entry.dagster_event.event_specific_data for r in records}


@pytest.fixture
def warehouse_path(tmp_path, monkeypatch) -> Path:
    """A fresh DuckDB file per test; also exported so child processes use it."""
    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("IIMED_WAREHOUSE", str(path))
    return path


def write_malformed_jsonl(path: Path) -> dict[str, int]:
    """A real-looking source file with one bad row of every kind the loader must ledger.

    Returns the expected ledger reasons with counts. Good rows come from the bundled ChatDoctor file.
    """
    good = []
    sample = Path(__file__).resolve().parents[1] / "iimed_assets" / "sources" / "sample" / "chatdoctor" / "chatdoctor5k.jsonl"
    with open(sample, "rb") as fh:
        for _ in range(20):
            good.append(fh.readline())
    lines: list[bytes] = []
    lines += good[:10]
    lines.append(b'{"instruction": "x", "input": "", "output": "empty prompt"}\n')           # empty_prompt
    lines.append(b'{"instruction": "x", "output": "no input field"}\n')                       # missing_prompt
    lines.append(b'{"instruction": "x", "input": {"nested": true}, "output": "y"}\n')        # wrong_type
    lines.append(b'["a", "list", "not", "an", "object"]\n')                                    # missing_prompt (no field)
    lines.append(b'{"instruction": "x", "input": "broken json", \n')                          # invalid_json
    lines.append(b'{"instruction": "x", "input": "bad \xff\xfe bytes", "output": "y"}\n')    # invalid_utf8
    lines.append(json.dumps({"instruction": "x", "input": "huge " * 60_000, "output": "y"}).encode() + b"\n")  # oversize
    lines.append(good[3])                                                                       # duplicate_id
    lines += good[10:20]
    lines.append(b"\n")  # a blank line is not a row
    path.write_bytes(b"".join(lines))
    return {"empty_prompt": 1, "missing_prompt": 2, "wrong_type": 1, "invalid_json": 1, "invalid_utf8": 1,
            "oversize": 1, "duplicate_id": 1}
