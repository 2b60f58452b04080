"""What the cleaning assets share: the section tables they merge, the candidate row's extra columns, the eval
index they all check against, and the small reads and checks of their metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import dagster as dg

from iimed_assets.assets.common import markdown_table, sample_column_schema
from iimed_assets.core import decontam
from iimed_assets.core.schema import INSTRUCT, PUBLIC_REASONING, QA_SEED, R1_TRACES
from iimed_assets.resources.warehouse import Warehouse


@dataclass(frozen=True)
class SectionInput:
    """A section's output table, and the stage scores its rows carry into `provenance` (a SQL JSON expression)."""

    section: str
    table: str
    provenance: str


# The section tables that feed the cleaning stages, in the card's order (`cand_order` follows it).
SECTION_INPUTS = [
    SectionInput(PUBLIC_REASONING, "public_reasoning_rows", "NULL"),
    SectionInput(QA_SEED, "qa_verified", "json_object('verify_method', verify_method, 'samples_total', samples_total, "
                                         "'samples_correct', samples_correct, 'kept_sample_index', kept_sample_index, "
                                         "'generator', generator)"),
    SectionInput(R1_TRACES, "r1_medical_traces", "json_object('cluster_id', cluster_id, 'domain', domain)"),
    SectionInput(INSTRUCT, "instruct_judged", "json_object('judge_score', judge_score, 'judge_model', judge_model, "
                                              "'generator', generator, 'response_origin', response_origin)"),
]
# The stages that ledger rows, in order; sft_final splits and sft_export writes files, neither drops a row.
LEDGERED_STAGES = ("sft_candidates", "sft_deduped", "sft_decontaminated")
EXTRA_COLUMNS = [
    dg.TableColumn("origin", "VARCHAR", description="the stage table the row came from"),
    dg.TableColumn("provenance", "JSON", description="scores from earlier stages (judge score, verify method, ...)"),
    dg.TableColumn("cand_order", "BIGINT", description="stable order: section (card order), source, id"),
]

NO_CONTAMINATION = "no_contamination"


def column_schema(*extra: dg.TableColumn) -> dg.TableSchema:
    return dg.TableSchema(columns=[*sample_column_schema().columns, *EXTRA_COLUMNS, *extra])


def count(warehouse: Warehouse, table: str) -> int:
    return int(warehouse.fetch_one(f"SELECT count(*) FROM {table}")[0]) if warehouse.table_exists(table) else 0


def rows_by_source(warehouse: Warehouse, table: str) -> str:
    rows = warehouse.fetch(f"SELECT section, source, count(*) FROM {table} GROUP BY ALL ORDER BY 1, 2")
    return markdown_table(["section", "source", "rows"], rows)


def preview(warehouse: Warehouse, table: str) -> str:
    rows = warehouse.fetch(f"SELECT id, source, prompt, messages[len(messages)].content FROM {table} "
                           "ORDER BY cand_order LIMIT 5")
    return markdown_table(["id", "source", "prompt", "response"], rows, 160)


def table_metadata(warehouse: Warehouse, table: str) -> dict:
    """What every cleaning table shows: row count, schema, rows by source, a preview."""
    return {
        "dagster/row_count": count(warehouse, table),
        "dagster/column_schema": column_schema(),
        "rows_by_source": dg.MetadataValue.md(rows_by_source(warehouse, table)),
        "preview": dg.MetadataValue.md(preview(warehouse, table)),
    }


def read_eval_items(warehouse: Warehouse) -> list[decontam.EvalItem]:
    """Every eval item, indexed as its bare question and as question + options (or context + question)."""
    if not warehouse.table_exists("eval_items"):
        return []
    return decontam.eval_items(warehouse.fetch(
        "SELECT source, id, prompt, meta->>'question', meta->>'context' FROM eval_items ORDER BY source, id"))


def id_prompt_batches(warehouse: Warehouse, table: str, batch_rows: int = 2000) -> Iterator[list[tuple[str, str]]]:
    """(id, prompt) of a cleaning table in `cand_order`, batch by batch."""
    for batch in warehouse.iter_keyset(table, ["cand_order", "id", "prompt"], "cand_order", batch_rows=batch_rows):
        yield [(r["id"], r["prompt"]) for r in batch]


def no_contamination(rate: decontam.ContaminationRate) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=NO_CONTAMINATION, passed=rate.contaminated == 0, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": rate.rows, "contaminated_rows": rate.contaminated, "contamination_rate": rate.rate,
                  "examples": dg.MetadataValue.json(list(rate.examples)), "threshold": "contaminated_rows == 0"})
