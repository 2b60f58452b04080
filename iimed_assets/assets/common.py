"""Metadata helpers every asset uses: column schema, row previews, ledger breakdowns, progress logs."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import dagster as dg

import pyarrow as pa

from iimed_assets.core.markdown import markdown_table  # noqa: F401  (re-exported for the assets)
from iimed_assets.core.schema import LEDGER_STAGE_SCHEMA, SAMPLE_COLUMN_DESCRIPTIONS, SAMPLE_COLUMNS_DDL, check_identifier
from iimed_assets.run_health import patch_slot_wait
from iimed_assets.resources.warehouse import LEDGER_TABLE, Staged, Swap, SwapBlocked, Warehouse
from iimed_assets.sources.ingest import BatchWriter

# Concurrency pool of the GPU-bound assets (local vLLM generation/judging, embeddings, K-means). The
# project dagster.yaml gives every pool one slot, so concurrent runs queue on the device; a step waiting for the
# slot sleeps and stops on SIGTERM (run_health.patch_slot_wait), and dead runs free it (run_health).
GPU_POOL = "gpu"
patch_slot_wait()


@dataclass
class StagedPartition:
    """A stage's output for one partition, on disk until the swap: new rows and ledger rows."""

    rows: BatchWriter
    ledger: BatchWriter

    def close(self) -> None:
        self.rows.close()
        self.ledger.close()


@contextlib.contextmanager
def staged_partition(warehouse: Warehouse, asset: str, partition: str, row_schema: pa.Schema) -> Iterator[StagedPartition]:
    """Temporary Parquet files beside the warehouse; removed after the block (swap inside it), or by the next stage
    when a kill skipped that."""
    with warehouse.staging_folder(f"{asset}-{partition}") as tmp:
        stage = StagedPartition(BatchWriter(tmp / "rows.parquet", row_schema, 1000),
                                BatchWriter(tmp / "ledger.parquet", LEDGER_STAGE_SCHEMA, 1000))
        try:
            yield stage
        finally:
            stage.close()


def swap_checked(context: dg.AssetExecutionContext, warehouse: Warehouse, change: Swap,
                 checks: Callable[[Staged], Sequence[dg.AssetCheckResult]] | None = None) -> list[dg.AssetCheckResult]:
    """`warehouse.swap` with the asset's checks evaluated on the staged rows, before anything is swapped.

    Returns the check results for the MaterializeResult. When a blocking check fails (severity ERROR), every
    result is logged as a check evaluation (the UI and the alert sensor show them), the step fails, and the
    previous rows and ledger stay exactly as they were: no materialization is recorded."""
    blocking = {spec.name for spec in context.assets_def.check_specs if spec.blocking}
    try:
        return warehouse.swap(change, run_id=context.run.run_id, checks=checks, blocking=blocking)
    except SwapBlocked as blocked:
        partition = context.partition_key if context.has_partition_key else None
        for r in blocked.results:
            context.log_event(dg.AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=r.check_name, passed=r.passed, metadata=r.metadata,
                severity=r.severity, description=r.description, blocking=r.check_name in blocking,
                partition=partition))
        raise dg.Failure(description=str(blocked), metadata={
            "failed_checks": dg.MetadataValue.json([r.check_name for r in blocked.failed]),
            "swapped": False}) from None


def sample_column_schema(extra: Mapping[str, tuple[str, str]] | None = None) -> dg.TableSchema:
    cols = [dg.TableColumn(name, type_.replace(" NOT NULL", ""), description=SAMPLE_COLUMN_DESCRIPTIONS.get(name))
            for name, type_ in SAMPLE_COLUMNS_DDL]
    for name, (type_, desc) in (extra or {}).items():
        cols.append(dg.TableColumn(name, type_, description=desc))
    return dg.TableSchema(columns=cols)


def ledger_markdown(counts: Mapping[str, int], total_in: int) -> str:
    if not counts:
        return "_no rows rejected_"
    rows = [(reason, n, f"{n / total_in:.2%}" if total_in else "-") for reason, n in counts.items()]
    return markdown_table(["reason", "rows", "share of input"], rows)


def sample_partition_stats(warehouse: Warehouse, table: str, partition: str, asset: str,
                           ledger_table: str = LEDGER_TABLE) -> dict[str, Any]:
    """Counts, shares and a preview of one source partition, read in one connection. Before a swap, pass the
    staged tables (`staged.table`, `ledger_table=staged.ledger`) to check the rows about to be swapped in."""
    table, ledger_table = check_identifier(table), check_identifier(ledger_table)
    with warehouse.connect() as con:
        rows, empty, with_think, with_options, with_gold = con.execute(
            f"""SELECT count(*),
                       count(*) FILTER (WHERE trim(prompt) = ''),
                       count(*) FILTER (WHERE list_bool_or(list_transform(messages,
                           lambda m: m.role = 'assistant' AND contains(m.content, '<think>')))),
                       count(*) FILTER (WHERE options IS NOT NULL),
                       count(*) FILTER (WHERE gold_answer IS NOT NULL)
                FROM {table} WHERE source = ?""", [partition]).fetchone()
        languages = dict(con.execute(
            f"SELECT language, count(*) FROM {table} WHERE source = ? GROUP BY 1 ORDER BY 2 DESC",
            [partition]).fetchall())
        preview = con.execute(
            f"""SELECT id, prompt, gold_answer, len(messages) AS turns,
                       messages[len(messages)].content AS last_turn
                FROM {table} WHERE source = ? ORDER BY id LIMIT 5""", [partition]).fetchall()
        ledger = dict(con.execute(
            f"SELECT reason, count(*) FROM {ledger_table} WHERE asset = ? AND partition = ? "
            "GROUP BY 1 ORDER BY 2 DESC, 1", [asset, partition]).fetchall())
        ledger_examples = con.execute(
            f"SELECT reason, row_id, detail FROM {ledger_table} WHERE asset = ? AND partition = ? "
            "ORDER BY reason, row_id LIMIT 8", [asset, partition]).fetchall()
    return {"rows": rows, "empty_prompts": empty, "with_think": with_think, "with_options": with_options,
            "with_gold": with_gold, "languages": languages, "preview": preview, "ledger": ledger,
            "ledger_examples": ledger_examples}


class Progress:
    """Logs rows done, rate and (when the total is known) ETA, at most every `every_s` seconds."""

    def __init__(self, log: Callable[[str], None], what: str, total: int | None = None, every_s: float = 10.0):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.started = time.perf_counter()
        self.last = self.started

    def __call__(self, done: int, note: str | float | None = None) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        msg = f"{self.what}: {done:,} rows, {rate:,.0f} rows/s"
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            msg += f", {done / self.total:.1%} done, ETA {eta:,.0f}s"
        if isinstance(note, str):  # a stage's own running counts
            msg += f"; {note}"
        self.log(msg)


def histogram_markdown(counts: Mapping[Any, int], label: str = "value") -> str:
    """A text bar chart: renders everywhere, including the run log."""
    if not counts:
        return "_(no values)_"
    top = max(counts.values()) or 1
    rows = [(k, n, "█" * max(1, round(30 * n / top)) if n else "") for k, n in counts.items()]
    return markdown_table([label, "rows", ""], rows)


def histogram_png_markdown(counts: Mapping[Any, int], title: str, xlabel: str) -> str:
    """A bar chart as an inline PNG in markdown metadata (the UI renders data-URI images)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    keys = [str(k) for k in counts]
    ax.bar(keys, list(counts.values()), color="#4c72b0")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("rows", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
