"""`sft_export`: the final rows as Parquet shards and JSONL, with a dataset card written from the warehouse.

The export writes only what it owns. It builds the new export in a staging folder beside `out_dir`, then swaps it
in. `out_dir` must be missing, empty, or a previous export of this project (its `.iimed-export.json` marker lists
the files it wrote, and the folder holds nothing else); anything else is refused with the reason, and nothing is
deleted that the marker does not list. Staging folders are removed when a run fails, and those of killed runs
(their process is gone) on the next run.
"""

import base64
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import dagster as dg
import duckdb
from pydantic import Field

from iimed_assets.assets.cleaning.funnel import SECTION_FUNNEL, stored_funnel
from iimed_assets.core import card, funnel, runs
from iimed_assets.core.report import PublishedFigures
from iimed_assets.provenance import build_info
from iimed_assets.resources.warehouse import LEDGER_TABLE, Warehouse, _pid_alive
from iimed_assets.sources import registry

EXPORT_COLUMNS = "id, source, section, messages, prompt, gold_answer, language, origin, provenance::VARCHAR AS provenance"
MARKER = ".iimed-export.json"         # in every export: written by this project, and the files it wrote
STAGING_MARKER = ".iimed-staging.json"  # in a staging folder while it is written: the process writing it
PROJECT = "iimed_assets"
FUNNEL_PNG = "source_funnel.png"
STALE_AFTER_S = 86_400  # a staging folder of another host counts as abandoned after a day


class ExportConfig(dg.Config):
    out_dir: str | None = Field(default=None, description="default: <warehouse dir>/export. Must be missing, empty "
                                                          "or a previous export of this project")
    shard_rows: int = Field(default=100_000, description="rows per Parquet shard")
    dataset_name: str = "II-Medical-Reasoning-SFT (reproduction)"


class ExportRefused(RuntimeError):
    """`out_dir` holds something this project did not write: nothing was written or deleted."""


# ---- paths in SQL ----------------------------------------------------------------------------------------------

def sql_string_literal(text: str) -> str:
    """`text` as a SQL string literal (quotes doubled), for where a DuckDB version cannot bind a parameter."""
    if "\x00" in text:
        raise ValueError("a path cannot contain NUL")
    return "'" + text.replace("'", "''") + "'"


def copy_to(con: duckdb.DuckDBPyConnection, select_sql: str, params: Sequence[Any], path: Path, options: str,
            bind_path: bool = True) -> None:
    """`COPY (select) TO path (options)` with the path passed safely: as a bound parameter (DuckDB >= 1.1 binds
    it), else as an escaped literal when the parser refuses the parameter."""
    if bind_path:
        try:
            con.execute(f"COPY ({select_sql}) TO ? ({options})", [*params, str(path)])
            return
        except duckdb.ParserException:
            pass
    con.execute(f"COPY ({select_sql}) TO {sql_string_literal(str(path))} ({options})", list(params))


# ---- the folder: what may be replaced, staging, the swap -------------------------------------------------------

def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("project") == PROJECT else None


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def check_out_dir(out: Path) -> dict | None:
    """The previous export's marker when `out` is one; None when `out` is missing or empty. Raises ExportRefused
    for anything else."""
    if out.is_symlink():
        raise ExportRefused(f"out_dir {out} is a symbolic link: give the folder itself")
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"out_dir {out} exists and is not a folder: choose another out_dir")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = read_marker(out)
    if marker is None:
        raise ExportRefused(f"out_dir {out} is not empty and is not an export of this project (no {MARKER}): nothing "
                            "was written or deleted. Choose an empty or new folder.")
    foreign = sorted(files_in(out) - set(marker.get("files", [])) - {MARKER, STAGING_MARKER})
    empty_dirs = [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())]
    if foreign or empty_dirs:
        names = foreign + [str(p.relative_to(out)) + "/" for p in empty_dirs]
        raise ExportRefused(f"out_dir {out} is a previous export, but it also holds what this project did not write "
                            f"({', '.join(names[:10])}{' …' if len(names) > 10 else ''}): nothing was written or "
                            "deleted. Move those away, or choose another out_dir.")
    return marker


def remove_export(folder: Path, marker: dict, log=None) -> list[str]:
    """Delete the files a previous export's marker lists, then the folders they emptied; returns what was left
    (anything the marker does not list stays)."""
    for name in marker.get("files", []):
        target = (folder / name)
        if target.resolve().is_relative_to(folder.resolve()) and (target.is_file() or target.is_symlink()):
            target.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    (folder / STAGING_MARKER).unlink(missing_ok=True)
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    left = sorted(files_in(folder))
    if not left:
        folder.rmdir()
    elif log:
        log(f"kept {len(left)} file(s) this project did not write in {folder}: {left[:10]}")
    return left


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.iimed-export-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_stale(out: Path, log=None) -> list[Path]:
    """Staging and old folders beside `out` left by killed runs: removed when their process is gone (same host)
    or they are older than a day (another host). Only folders with this project's marker are touched."""
    removed = []
    if not out.parent.exists():
        return removed
    here = socket.gethostname()
    for path in out.parent.glob(f".{out.name}.iimed-export-*"):
        if not path.is_dir() or path.is_symlink():
            continue
        staging = _read_json(path / STAGING_MARKER)
        export = read_marker(path)
        if staging and staging.get("project") == PROJECT:
            gone = (staging.get("host") == here and not _pid_alive(int(staging.get("pid", 0)))) or \
                   (staging.get("host") != here and time.time() - float(staging.get("started", 0)) > STALE_AFTER_S)
            if gone:
                shutil.rmtree(path)  # a staging folder holds only what its run wrote
                removed.append(path)
        elif export is not None and "-old-" in path.name:
            if not out.exists():  # killed between moving the previous export aside and moving the new one in
                path.rename(out)
                if log:
                    log(f"restored the previous export {out} from {path.name} (a run was killed mid-swap)")
                continue
            remove_export(path, export, log)
            removed.append(path)
        elif not any(path.iterdir()):
            path.rmdir()  # a run killed right after mkdir
            removed.append(path)
    if removed and log:
        log(f"removed {len(removed)} folder(s) left by killed export runs: {[p.name for p in removed]}")
    return removed


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def swap_in(staging: Path, out: Path, previous: dict | None, log=None) -> None:
    """Move the finished staging folder to `out`; a previous export is moved aside first and removed by its marker
    after the move (restored if the move fails)."""
    if previous is None:
        if out.exists():
            out.rmdir()  # empty (check_out_dir): nothing of anyone's is lost
        staging.rename(out)
        return
    old = _sibling(out, "old")
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    remove_export(old, previous, log)


# ---- the files ---------------------------------------------------------------------------------------------------

def write_files(warehouse: Warehouse, folder: Path, counts: dict[str, int], shard_rows: int) -> dict[str, list[str]]:
    """Each split as `data/<split>-NNNNN-of-NNNNN.parquet` shards and `<split>.jsonl`; returns the shard paths."""
    files: dict[str, list[str]] = {}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    with warehouse.connect() as con:
        for split, n in sorted(counts.items()):
            shards = max(1, -(-n // shard_rows))
            files[split] = []
            for k in range(shards):
                name = f"data/{split}-{k:05d}-of-{shards:05d}.parquet"
                copy_to(con, f"SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order LIMIT ? "
                             "OFFSET ?", [split, shard_rows, k * shard_rows], folder / name,
                        "FORMAT parquet, COMPRESSION zstd")
                files[split].append(name)
            copy_to(con, f"SELECT {EXPORT_COLUMNS} FROM sft_final WHERE split = ? ORDER BY cand_order", [split],
                    folder / f"{split}.jsonl", "FORMAT json")
    return files


def published_figures() -> PublishedFigures:
    """The published card's figures, as the registry quotes them."""
    return PublishedFigures(registry.PUBLISHED_TOTAL, registry.PUBLISHED_SECTIONS, registry.PUBLISHED_SECTIONS_1_AND_3,
                            {s.name: s.published_rows for s in registry.SOURCES}, registry.PUBLISHED_CITATION)


def card_inputs(warehouse: Warehouse, name: str, files: dict[str, list[str]], funnel_png: str | None) -> card.CardInputs:
    """Everything the card says, read from the warehouse and the registry."""
    history = warehouse.stage_history()
    current = runs.current_runs(history)
    read_from = {r.partition: r.params.get("read_from") for r in current
                 if r.asset in {s[0].asset for s in funnel.SECTION_STAGES.values()}}
    rows = stored_funnel(warehouse)
    specs = [(section, registry.BY_NAME.get(src)) for section, src in sorted({(r.section, r.source) for r in rows})]
    sources = [card.SourceInfo(section, spec.name, spec.title, spec.hf_id, spec.licence, spec.fields.language,
                               read_from.get(spec.name), spec.sample_note if read_from.get(spec.name) == "sample" else None)
               for section, spec in specs if spec is not None]
    sources += [card.SourceInfo(r.section, r.source, r.source, None, "not in the registry", "?")
                for r in rows if r.step == 0 and r.source not in registry.BY_NAME]
    order = {s: i for i, s in enumerate(funnel.SECTION_ORDER)}
    sources.sort(key=lambda s: (order.get(s.section, 99), s.name))
    languages: dict[str, dict[str, int]] = {}
    for source, lang, n in warehouse.fetch("SELECT source, language, count(*) FROM sft_final GROUP BY ALL ORDER BY 1, 3 DESC"):
        languages.setdefault(source, {})[lang] = n
    _, decontam_stats = warehouse.stage_record("sft_decontaminated")
    removed = decontam_stats.get("removed_by_eval_set", {})
    items = dict(warehouse.fetch("SELECT source, count(*) FROM eval_items GROUP BY 1")) \
        if warehouse.table_exists("eval_items") else {}
    eval_sets = [card.EvalSet(s.name, s.title, s.hf_id, int(items.get(s.name, 0)), int(removed.get(s.name, 0)))
                 for s in registry.sources_in("eval")]
    stages = [s.asset for sec in funnel.SECTION_ORDER for s in funnel.stages_of(sec)]
    profiles = sorted({str(r.params["profile"]) for r in current if r.params.get("profile")})
    builds = sorted({str(r.stats["build"]) for r in current if r.stats.get("build")})
    return card.CardInputs(
        name=name, build=build_info().markdown(), files=files, funnel=rows,
        rollup=stored_funnel(warehouse, SECTION_FUNNEL), sources=sources, languages=languages,
        published=published_figures(),
        stages=runs.stage_settings(history), eval_sets=eval_sets, profile=", ".join(profiles) or None,
        funnel_png=funnel_png, stage_builds=builds,
        by_section=warehouse.fetch("SELECT section, count(*) FILTER (WHERE split = 'train'), count(*) FILTER "
                                   "(WHERE split = 'validation') FROM sft_final GROUP BY 1 ORDER BY 1"),
        ledger=warehouse.fetch(f"SELECT asset, reason, count(*) FROM {LEDGER_TABLE} WHERE asset IN "
                               "(SELECT unnest(?::VARCHAR[])) GROUP BY ALL ORDER BY 1, 3 DESC", [stages]))


def write_export(warehouse: Warehouse, staging: Path, dataset_name: str, shard_rows: int) -> str:
    """The export's files in `staging`, the card last, then the marker listing every file; returns the card."""
    counts = dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1"))
    files = write_files(warehouse, staging, counts, shard_rows)
    (staging / FUNNEL_PNG).write_bytes(funnel.funnel_plot_png(stored_funnel(warehouse)))
    text = card.dataset_card(card_inputs(warehouse, dataset_name, files, FUNNEL_PNG))
    (staging / "README.md").write_text(text, encoding="utf-8")
    written = sorted(files_in(staging) - {STAGING_MARKER})
    (staging / MARKER).write_text(json.dumps({"project": PROJECT, "files": written, "written_at": time.time()},
                                             indent=1))
    return text


@dg.asset(group_name="cleaning", kinds={"parquet", "json"}, deps=["sft_final", "source_funnel"])
def sft_export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Parquet shards that `datasets` loads (a `messages` column), the same rows as JSONL, and a dataset card
    (README.md) that puts this run next to the published card: funnel, models and parameters, licences."""
    out = Path(config.out_dir).expanduser().absolute() if config.out_dir else warehouse.database.parent / "export"
    if not warehouse.table_exists("source_funnel"):
        raise dg.Failure("source_funnel is missing: materialize it first (the card is written from it)")
    clean_stale(out, context.log.info)
    try:
        previous = check_out_dir(out)
    except ExportRefused as refused:
        raise dg.Failure(description=str(refused)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out, "staging")
    staging.mkdir()
    try:
        (staging / STAGING_MARKER).write_text(json.dumps({"project": PROJECT, "pid": os.getpid(),
                                                          "host": socket.gethostname(), "started": time.time()}))
        text = write_export(warehouse, staging, config.dataset_name, config.shard_rows)
        swap_in(staging, out, previous, context.log.info)
        (out / STAGING_MARKER).unlink(missing_ok=True)  # the staging folder is the export now
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # ours: created above, under a name no one else uses
        raise
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": dg.MetadataValue.json(dict(warehouse.fetch("SELECT split, count(*) FROM sft_final GROUP BY 1"))),
        "files": dg.MetadataValue.json(sizes),
        "replaced_previous_export": previous is not None,
        # the card as the UI renders it: the plot inline (on the hub it is the file beside the card)
        "dataset_card": dg.MetadataValue.md(text.replace(
            f"]({FUNNEL_PNG})", "](data:image/png;base64," + base64.b64encode((out / FUNNEL_PNG).read_bytes()).decode()
            + ")")),
    })
