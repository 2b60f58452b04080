"""`sft_candidates`: the four sections' output tables merged into one, in the sample row schema."""

import dagster as dg

from iimed_assets import checks
from iimed_assets.assets.cleaning.common import SECTION_INPUTS, SectionInput, count, table_metadata
from iimed_assets.assets.common import histogram_markdown, swap_checked
from iimed_assets.core.schema import SAMPLE_COLUMN_NAMES
from iimed_assets.resources.warehouse import Select, Swap, Warehouse

# An SFT sample must end in a non-empty assistant turn; a row without one (a prompt-only source) is ledgered.
ANSWERED = ("len(messages) > 0 AND messages[len(messages)].role = 'assistant' "
            "AND trim(coalesce(messages[len(messages)].content, '')) <> ''")


def candidates_swap(present: list[SectionInput]) -> Swap:
    """The union of the present section tables, numbered in `cand_order` (section in card order, source, id);
    rows without an answer go to the ledger as `no_response`."""
    cols = ", ".join(SAMPLE_COLUMN_NAMES)
    union = " UNION ALL BY NAME ".join(
        f"SELECT {cols}, '{s.table}' AS origin, CAST({s.provenance} AS JSON) AS provenance, {rank} AS _section_rank "
        f"FROM {s.table}" for rank, s in enumerate(present))
    return Swap(
        "sft_candidates",
        Select("sft_candidates", f"SELECT {cols}, origin, provenance, row_number() OVER (ORDER BY _section_rank, "
                                 f"source, id) AS cand_order FROM ({union}) WHERE {ANSWERED} ORDER BY cand_order"),
        ledger_sql=f"SELECT id AS row_id, 'no_response' AS reason, origin || ': the last turn is ' || "
                   f"coalesce(messages[len(messages)].role, 'missing') || ', not a non-empty assistant answer' "
                   f"AS detail FROM ({union}) WHERE NOT ({ANSWERED}) ORDER BY id")


@dg.asset(
    group_name="cleaning",
    kinds={"duckdb"},
    deps=[s.table for s in SECTION_INPUTS],
    check_specs=[dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="sft_candidates", blocking=True,
                                   description="Every row of every section table is a candidate or ledgered "
                                               "(no_response).")],
)
def sft_candidates(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """The union of the four sections' output tables, in the sample row schema, with provenance columns.
    A section whose table does not exist yet (its stage has not run) contributes no rows and is named in the
    metadata."""
    present = [s for s in SECTION_INPUTS if warehouse.table_exists(s.table)]
    if not present:
        raise dg.Failure("no section table exists yet: materialize the section assets first")
    rows_in = sum(count(warehouse, s.table) for s in present)
    results = swap_checked(context, warehouse, candidates_swap(present), lambda staged: [checks.rows_conserved(
        rows_in, staged.count(warehouse), sum(staged.ledger_counts(warehouse).values()))])
    return dg.MaterializeResult(
        metadata={
            **table_metadata(warehouse, "sft_candidates"),
            "inputs_present": dg.MetadataValue.json([s.table for s in present]),
            "inputs_missing": dg.MetadataValue.json([s.table for s in SECTION_INPUTS if s not in present]),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(warehouse.ledger_counts("sft_candidates"),
                                                                          "reason")),
        },
        check_results=results,
    )
