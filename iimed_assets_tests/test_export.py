"""The export writes only what it owns (issue 21, requirement 2): it refuses a folder it did not write, never
deletes a file it did not write, passes paths to SQL safely, and cleans its staging folders on failure and after
a killed run. Over a real warehouse built from the bundled sample by the real assets."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from iimed_assets.assets.cleaning import export
from iimed_assets.definitions import MATERIALIZE_ORDER
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.warehouse import Warehouse

ASSETS = {a.key.to_user_string(): a for a in MATERIALIZE_ORDER}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """Two section-1 sources and one eval set from the bundled sample, through cleaning and the funnel."""
    path = tmp_path_factory.mktemp("export_wh") / "warehouse.duckdb"
    resources = {"warehouse": Warehouse(path=str(path)), "catalog": SourceCatalog(mode="sample")}
    for name, key in (("eval_items", "liveqa_med"), ("public_reasoning_rows", "medical_r1_distill"),
                      ("public_reasoning_rows", "m23k")):
        assert dg.materialize([ASSETS[name]], partition_key=key, resources=resources).success
    for name in ("sft_candidates", "sft_deduped", "sft_decontaminated", "sft_final", "source_funnel"):
        assert dg.materialize([ASSETS[name]], resources=resources).success, name
    return path


def _export(warehouse: Path, out: Path, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize([ASSETS["sft_export"]], resources={"warehouse": Warehouse(path=str(warehouse))},
                          raise_on_error=raise_on_error,
                          run_config={"ops": {"sft_export": {"config": {"out_dir": str(out)}}}})


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (event,) = [e for e in result.all_events if e.is_step_failure]
    error, messages = event.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".iimed-export-" in p.name)


def test_export_writes_a_marked_folder_and_replaces_only_its_own_previous_export(warehouse, tmp_path):
    out = tmp_path / "export"
    assert _export(warehouse, out).success
    marker = json.loads((out / export.MARKER).read_text())
    assert marker["project"] == "iimed_assets"
    assert set(marker["files"]) == set(_tree(out)) - {export.MARKER}
    assert {"README.md", "train.jsonl", export.FUNNEL_PNG} <= set(marker["files"])
    # a second export replaces the first (its marker lists every file), leaving no staging or old folder
    (out / "data" / "train-00000-of-00001.parquet").write_bytes(b"stale")  # listed: ours to replace
    assert _export(warehouse, out).success
    assert (out / "data" / "train-00000-of-00001.parquet").read_bytes()[:4] == b"PAR1"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["warehouse folder", "user folder", "file"])
def test_export_refuses_a_folder_it_did_not_write_and_deletes_nothing(warehouse, tmp_path, where):
    if where == "warehouse folder":
        out = warehouse.parent  # holds the warehouse file itself
    elif where == "user folder":
        out = tmp_path / "mine"
        (out / "sub").mkdir(parents=True)
        (out / "notes.txt").write_text("keep me")
        (out / "sub" / "README.md").write_text("mine too")
    else:
        out = tmp_path / "a-file"
        out.write_text("not a folder")
    before = _tree(out) if out.is_dir() else out.read_text()
    result = _export(warehouse, out, raise_on_error=False)
    assert not result.success
    message = _failure(result)
    assert str(out) in message and "nothing was written or deleted" in message or "not a folder" in message
    assert (_tree(out) if out.is_dir() else out.read_text()) == before
    assert _leftovers(out.parent) == []


def test_export_refuses_a_previous_export_that_holds_a_file_it_did_not_write(warehouse, tmp_path):
    out = tmp_path / "export"
    assert _export(warehouse, out).success
    (out / "my_analysis.ipynb").write_text("{}")
    before = _tree(out)
    result = _export(warehouse, out, raise_on_error=False)
    assert not result.success and "my_analysis.ipynb" in _failure(result)
    assert _tree(out) == before


def test_export_into_an_empty_folder(warehouse, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _export(warehouse, out).success and (out / export.MARKER).exists()


@pytest.mark.parametrize("name", ["it's here", "with space", "ünïcødé ☃ 医学", "semi;colon) -- x"])
def test_paths_with_quotes_spaces_and_unicode(warehouse, tmp_path, name):
    out = tmp_path / name / "export"
    assert _export(warehouse, out).success
    n = duckdb.connect(str(warehouse), read_only=True).execute("SELECT count(*) FROM sft_final").fetchone()[0]
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(out / "data" / "*.parquet")]).fetchone()[0] == n
    assert sum(1 for _ in open(out / "train.jsonl", encoding="utf-8")) == n


@pytest.mark.parametrize("bind_path", [True, False])
def test_copy_to_passes_the_path_safely_bound_or_as_an_escaped_literal(tmp_path, bind_path):
    """DuckDB binds COPY ... TO ? here; the escaped-literal fallback (for versions that cannot) is exercised too."""
    path = tmp_path / "it's a 'quoted' ünï ☃ path.parquet"
    con = duckdb.connect()
    export.copy_to(con, "SELECT ? AS x", ["o'k"], path, "FORMAT parquet", bind_path=bind_path)
    assert con.execute("SELECT x FROM read_parquet(?)", [str(path)]).fetchall() == [("o'k",)]
    assert export.sql_string_literal("a'b") == "'a''b'"
    with pytest.raises(ValueError):
        export.sql_string_literal("a\x00b")


def test_a_failed_export_removes_its_staging_folder_and_keeps_the_previous_export(warehouse, tmp_path, monkeypatch):
    out = tmp_path / "export"
    assert _export(warehouse, out).success
    before = _tree(out)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(export, "card_inputs", broken)  # fails after the data files are staged
    result = _export(warehouse, out, raise_on_error=False)
    assert not result.success and "disk full" in _failure(result)
    assert _tree(out) == before and _leftovers(tmp_path) == []


KILLED_RUN = """
import os, sys
import dagster as dg
from iimed_assets.assets.cleaning import export
from iimed_assets.definitions import MATERIALIZE_ORDER
from iimed_assets.resources.warehouse import Warehouse
warehouse, out, when = sys.argv[1:]
asset = next(a for a in MATERIALIZE_ORDER if a.key.to_user_string() == "sft_export")
if when == "writing":
    export.card_inputs = lambda *a, **k: os._exit(9)  # killed while the files are being written
else:
    def swap_in(staging, out, previous, log=None):      # killed after the previous export was moved aside,
        out.rename(export._sibling(out, "old"))         # before the new one was moved in
        os._exit(9)
    export.swap_in = swap_in
dg.materialize([asset], resources={"warehouse": Warehouse(path=warehouse)},
               run_config={"ops": {"sft_export": {"config": {"out_dir": out}}}})
"""


@pytest.mark.parametrize("when", ["writing", "swapping"])
def test_a_killed_export_leaves_the_previous_one_and_the_next_run_cleans_up(warehouse, tmp_path, when):
    out = tmp_path / "export"
    assert _export(warehouse, out).success
    before = _tree(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(warehouse), str(out), when], timeout=600,
                          env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    left = _leftovers(tmp_path)
    if when == "writing":
        assert _tree(out) == before and len(left) == 1 and "-staging-" in left[0]  # the killed run's folder
    else:
        assert not out.exists() and sorted(n.split("-export-")[1].split("-")[0] for n in left) == ["old", "staging"]
    # the next run removes the killed run's staging folder (its process is gone), restores or replaces the
    # previous export, and writes its own
    assert _export(warehouse, out).success
    assert _leftovers(tmp_path) == [] and set(_tree(out)) == set(before)


def test_a_running_exports_staging_folder_is_left_alone(tmp_path):
    """Only a staging folder whose process is gone (or that is a day old, from another host) is removed."""
    out = tmp_path / "export"
    live = tmp_path / f".export.iimed-export-staging-{os.getpid()}-abc"
    live.mkdir()
    (live / export.STAGING_MARKER).write_text(json.dumps({"project": "iimed_assets", "pid": os.getpid(),
                                                          "host": os.uname().nodename, "started": 0}))
    foreign = tmp_path / ".export.iimed-export-staging-1-zzz"  # no marker of ours, not empty: not ours to touch
    foreign.mkdir()
    (foreign / "x").write_text("?")
    assert export.clean_stale(out) == []
    assert live.exists() and (foreign / "x").exists()
