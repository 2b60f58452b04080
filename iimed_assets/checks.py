"""Asset checks shared by every stage: specs (what the UI lists) and evaluations (measured value +
threshold in the metadata, always).

The row-ledger invariant, `rows in = rows out + rows in the ledger`, is checked per asset and
partition by `rows_conserved`; it blocks downstream assets when it fails.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from iimed_assets.core.llm import UsageStats

ROWS_CONSERVED = "rows_conserved"
ROW_COUNT_IN_BOUNDS = "row_count_in_bounds"
NO_EMPTY_PROMPTS = "no_empty_prompts"
FIELD_COVERAGE = "field_coverage"
DUPLICATE_IDS_WITHIN_BOUND = "duplicate_ids_within_bound"


def source_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(ROWS_CONSERVED, asset=asset, blocking=True,
                          description="Every row read is written or in row_ledger with a reason."),
        dg.AssetCheckSpec(ROW_COUNT_IN_BOUNDS, asset=asset, blocking=True,
                          description="The partition holds as many rows as configured for its source."),
        dg.AssetCheckSpec(NO_EMPTY_PROMPTS, asset=asset, blocking=True,
                          description="No written row has an empty prompt."),
        dg.AssetCheckSpec(FIELD_COVERAGE, asset=asset, blocking=True,
                          description="Each field the source declares (reasoning, options, gold, response, context) "
                                      "is present in at least its declared share of rows."),
        dg.AssetCheckSpec(DUPLICATE_IDS_WITHIN_BOUND, asset=asset, blocking=True,
                          description="The share of rows whose id repeats an earlier row stays under the source's bound."),
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


def field_coverage(shares: dict[str, float], expects: dict[str, float], rows: int,
                   missing_examples: dict[str, list[tuple[str, str]]]) -> dg.AssetCheckResult:
    """Blocking: a declared field far below its share means a wrong mapping, not noise. The description names the
    field(s); the metadata holds every share, every minimum and rows that lack the failing fields."""
    short = {f: (shares.get(f, 0.0), m) for f, m in expects.items() if shares.get(f, 0.0) < m} if rows else {}
    lines = [f"{f}: {share:.1%} < {m:.0%}" for f, (share, m) in short.items()]
    examples = [f"**{f}** missing in: " + "; ".join(f"`{i}` {p}" for i, p in missing_examples.get(f, [])[:3])
                for f in short]
    return dg.AssetCheckResult(
        check_name=FIELD_COVERAGE,
        passed=not short,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**{f"share_{f}": v for f, v in shares.items()},
                  **{f"min_{f}": v for f, v in expects.items()},
                  "rows": rows, "threshold": "share >= declared minimum, per declared field",
                  "examples": dg.MetadataValue.md("\n\n".join(examples) or "_none_")},
        description=("field coverage too low: " + ", ".join(lines)) if short else
                    (None if rows else "no rows to measure (the row-count check covers empty partitions)"),
    )


def duplicate_ids_within_bound(duplicates: int, rows: int, bound: float,
                               top: list[tuple[str, int]]) -> dg.AssetCheckResult:
    """Blocking: many rows sharing an id means the id key is wrong (e.g. an index that repeats across subsets)."""
    share = duplicates / rows if rows else 0.0
    return dg.AssetCheckResult(
        check_name=DUPLICATE_IDS_WITHIN_BOUND,
        passed=share <= bound,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"duplicate_rows": duplicates, "rows": rows, "duplicate_share": round(share, 4),
                  "max_share": bound, "most_repeated": dg.MetadataValue.json(dict(top))},
        description=None if share <= bound else
        f"{share:.1%} of rows repeat an earlier id (bound {bound:.0%}): the source's id key is probably wrong",
    )


# ---- every LLM stage: the share of samples that came back failed or empty (issue 21.7) ---------------------------

LLM_FAILURE_SHARE = "llm_failure_share"


FAILURE_BOUNDS = frozenset({"failure_warn_share", "failure_error_share"})  # config fields that never change rows


class LLMFailureBounds(dg.Config):
    """The failure-share bounds of an LLM stage (its config inherits them, so each stage sets its own)."""

    failure_warn_share: float = Field(default=0.01, description="WARN when more than this share of the stage's "
                                                                "samples failed or came back empty")
    failure_error_share: float = Field(default=0.10, description="blocking ERROR above this share: the partition keeps "
                                                                 "its previous rows; a rerun asks the failed ones again")


def llm_failure_spec(asset: str, role: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(LLM_FAILURE_SHARE, asset=asset, blocking=True,
                             description=f"At most a small share of the {role}'s samples failed or came back empty "
                                         "(WARN above failure_warn_share, blocking ERROR above failure_error_share).")


def llm_failure_share(stats: UsageStats | None, bounds: LLMFailureBounds, role: str) -> dg.AssetCheckResult:
    """Failed (no answer after the client's retries) and empty samples over every sample the stage asked for,
    cached ones included: a server that died at request 80 of 150 fails the stage loudly instead of writing 76
    rows."""
    stats = stats or UsageStats()
    failed, empty = stats.finish_reasons.get("error", 0), stats.finish_reasons.get("empty", 0)
    share = (failed + empty) / stats.samples if stats.samples else 0.0
    too_many = share > bounds.failure_error_share
    return dg.AssetCheckResult(
        check_name=LLM_FAILURE_SHARE,
        passed=share <= bounds.failure_warn_share,
        severity=dg.AssetCheckSeverity.ERROR if too_many else dg.AssetCheckSeverity.WARN,
        metadata={"role": role, "samples": stats.samples, "failed_samples": failed, "empty_samples": empty,
                  "failure_share": round(share, 4), "warn_above": bounds.failure_warn_share,
                  "error_above": bounds.failure_error_share, "asked_again": stats.asked_again},
        description=None if share <= bounds.failure_warn_share else
        f"{failed + empty} of {stats.samples} {role} samples ({share:.1%}) failed or came back empty "
        f"(WARN above {bounds.failure_warn_share:.0%}, ERROR above {bounds.failure_error_share:.0%}); a rerun asks "
        "them again",
    )
