"""`sft_export`: the final rows as Parquet shards and JSONL, with a dataset card written from the warehouse."""

import os
import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

from iimed_assets.core.card import CardInputs, dataset_card
from iimed_assets.resources.warehouse import LEDGER_TABLE, Warehouse

EXPORT_COLUMNS = "id, source, section, messages, prompt, gold_answer, language, origin, provenance::VARCHAR AS provenance"


class ExportConfig(dg.Config):
    out_dir: str | None = Field(default=None, description="default: <warehouse dir>/export")
    shard_rows: int = Field(default=100_000, description="rows per Parquet shard")
    dataset_name: str = "II-Medical-Reasoning-SFT (reproduction)"


def write_files(warehouse: Warehouse, folder: Path, counts: dict[str, int], shard_rows: int) -> dict[str, list[str]]:
    """Each split as `data/<split>-NNNNN-of-NNNNN.parquet` shards and `<split>.jsonl`; returns the shard paths."""
    files: dict[str, list[str]] = {}
    with warehouse.connect() as con:
        for split, n in sorted(counts.items()):
            shards = max(1, -(-n // shard_rows))
            files[split] = []
            for k in range(shards):
                name = f"data/{split}-{k:05d}-of-{shards:05d}.parquet"
                con.execute(f"COPY (SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order "
                            f"LIMIT ? OFFSET ?) TO '{folder / name}' (FORMAT parquet, COMPRESSION zstd)",
                            [split, shard_rows, k * shard_rows])
                files[split].append(name)
            con.execute(f"COPY (SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order) "
                        f"TO '{folder / f'{split}.jsonl'}' (FORMAT json)", [split])
    return files


def card_inputs(warehouse: Warehouse, name: str, files: dict[str, list[str]]) -> CardInputs:
    dedup_params, dedup_stats = warehouse.stage_record("sft_deduped")
    decontam_params, decontam_stats = warehouse.stage_record("sft_decontaminated")
    return CardInputs(
        name=name, files=files, dedup_params=dedup_params, dedup_stats=dedup_stats,
        decontam_params=decontam_params, decontam_stats=decontam_stats,
        by_section=warehouse.fetch("SELECT section, count(*) FILTER (WHERE split = 'train'), count(*) FILTER "
                                   "(WHERE split = 'validation') FROM sft_final GROUP BY 1 ORDER BY 1"),
        by_source=warehouse.fetch("SELECT section, source, count(*) FROM sft_final GROUP BY ALL ORDER BY 1, 2"),
        ledger=warehouse.fetch(f"SELECT asset, reason, count(*) FROM {LEDGER_TABLE} GROUP BY ALL ORDER BY 1, 3 DESC"))


@dg.asset(group_name="cleaning", kinds={"parquet", "json"}, deps=["sft_final"])
def sft_export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Parquet shards that `datasets` loads (a `messages` column), the same rows as JSONL, and a dataset card
    (README.md) written from the real counts, the parameters each stage actually used, and the ledger."""
    out = Path(config.out_dir).expanduser() if config.out_dir else warehouse.database.parent / "export"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    counts = dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1"))
    files = write_files(warehouse, tmp, counts, config.shard_rows)
    card = dataset_card(card_inputs(warehouse, config.dataset_name, files))
    (tmp / "README.md").write_text(card)
    # swap the finished export in (a failed run leaves the previous export in place)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": dg.MetadataValue.json(counts),
        "files": dg.MetadataValue.json(sizes),
        "dataset_card": dg.MetadataValue.md(card),
    })
