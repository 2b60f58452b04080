"""Asset checks shared by every stage: specs (what the UI lists) and evaluations (measured value +
threshold in the metadata, always).

The row-ledger invariant, `rows in = rows out + rows in the ledger`, is checked per asset and
partition by `rows_conserved`; it blocks downstream assets when it fails.
"""

from __future__ import annotations

import dagster as dg

ROWS_CONSERVED = "rows_conserved"
ROW_COUNT_IN_BOUNDS = "row_count_in_bounds"
NO_EMPTY_PROMPTS = "no_empty_prompts"


def source_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(ROWS_CONSERVED, asset=asset, blocking=True,
                          description="Every row read is written or in row_ledger with a reason."),
        dg.AssetCheckSpec(ROW_COUNT_IN_BOUNDS, asset=asset, blocking=True,
                          description="The partition holds as many rows as configured for its source."),
        dg.AssetCheckSpec(NO_EMPTY_PROMPTS, asset=asset, blocking=True,
                          description="No written row has an empty prompt."),
    ]


def rows_conserved(rows_in: int, rows_out: int, ledger_rows: int) -> dg.AssetCheckResult:
    lost = rows_in - rows_out - ledger_rows
    return dg.AssetCheckResult(
        check_name=ROWS_CONSERVED,
        passed=lost == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_in": rows_in, "rows_out": rows_out, "ledger_rows": ledger_rows,
                  "unaccounted_rows": lost, "threshold": "unaccounted_rows == 0"},
        description=None if lost == 0 else f"{lost} rows are neither written nor in the ledger",
    )


def row_count_in_bounds(rows: int, lo: int, hi: int | None) -> dg.AssetCheckResult:
    """Too few rows is an ERROR (a truncated or empty download); too many is a WARN."""
    too_few = rows < lo
    too_many = hi is not None and rows > hi
    return dg.AssetCheckResult(
        check_name=ROW_COUNT_IN_BOUNDS,
        passed=not (too_few or too_many),
        severity=dg.AssetCheckSeverity.ERROR if too_few else dg.AssetCheckSeverity.WARN,
        metadata={"rows": rows, "min_rows": lo, "max_rows": hi if hi is not None else "none"},
        description=(f"{rows} rows < minimum {lo}" if too_few else
                     f"{rows} rows > maximum {hi}" if too_many else None),
    )


def no_empty_prompts(empty: int, rows: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=NO_EMPTY_PROMPTS,
        passed=empty == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"empty_prompts": empty, "rows": rows, "threshold": "empty_prompts == 0"},
    )
