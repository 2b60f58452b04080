"""Source assets through Dagster: materialize partitions on a real DuckDB file in tmp_path."""

import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from pathlib import Path

from iimed_assets.assets.sources import SOURCE_ASSETS, eval_items, instruct_prompt_rows, qa_seed_rows, r1_trace_rows
from iimed_assets.definitions import defs
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.warehouse import Swap, Warehouse
from iimed_assets.sources.loaders import SAMPLE_DIR

from .conftest import logged_checks, write_malformed_jsonl


def _materialize(asset, key, warehouse_path, catalog=None, raise_on_error=True):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], partition_key=key, raise_on_error=raise_on_error, instance=instance,
            resources={"warehouse": Warehouse(path=str(warehouse_path)),
                       "catalog": catalog or SourceCatalog(mode="sample")},
        )
        # A blocked swap fails the step before a MaterializeResult exists: its checks are in the event log.
        result.logged_checks = logged_checks(instance, result.run_id)
    return result


def _checks(result):
    return result.logged_checks


def _metadata(result):
    (event,) = result.get_asset_materialization_events()
    return event.materialization.metadata


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "public_reasoning_rows", "qa_seed_rows", "r1_trace_rows", "instruct_prompt_rows", "eval_items"}


def test_definitions_import_is_light():
    """Importing the code location must not pull in torch, datasets, vllm, faiss, sentence-transformers, llama.cpp or
    numba (the cleaning kernels load it on first use)."""
    code = ("import sys, iimed_assets.definitions; "
            "heavy = [m for m in ('torch', 'datasets', 'vllm', 'faiss', 'sentence_transformers', 'llama_cpp', 'numba') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_partition_materializes_with_checks_and_metadata(warehouse_path):
    result = _materialize(qa_seed_rows, "medmcqa", warehouse_path)
    assert result.success
    checks = _checks(result)
    assert set(checks) == {"rows_conserved", "row_count_in_bounds", "no_empty_prompts", "field_coverage",
                           "duplicate_ids_within_bound"}
    assert all(c.passed for c in checks.values())
    assert checks["field_coverage"].metadata["min_options"].value == 0.95
    md = _metadata(result)
    bundled = sum(1 for line in open(SAMPLE_DIR / "selfbiorag/medmc_qa_train_gpt4.jsonl") if line.strip())
    assert bundled >= 6 and md["dagster/row_count"].value == bundled
    assert md["rows_read"].value == bundled
    assert "id" in [c.name for c in md["dagster/column_schema"].schema.columns]
    assert "| id |" in md["preview"].value
    assert md["share_with_options"].value == 1.0 and md["share_with_gold"].value == 1.0
    con = duckdb.connect(str(warehouse_path))
    rows = con.execute("SELECT gold_answer, cardinality(options), messages[1].role FROM qa_seed_rows").fetchall()
    assert len(rows) == bundled and all(g in "ABCD" and n == 4 and r == "user" for g, n, r in rows)


def test_rerun_replaces_exactly_that_partition(warehouse_path):
    _materialize(eval_items, "medbullets_op4", warehouse_path)
    _materialize(eval_items, "afrimedqa", warehouse_path)
    before = duckdb.connect(str(warehouse_path)).execute(
        "SELECT source, count(*) FROM eval_items GROUP BY 1 ORDER BY 1").fetchall()
    _materialize(eval_items, "afrimedqa", warehouse_path)
    after = duckdb.connect(str(warehouse_path)).execute(
        "SELECT source, count(*) FROM eval_items GROUP BY 1 ORDER BY 1").fetchall()
    assert before == after == [("afrimedqa", 174), ("medbullets_op4", 308)]


def test_malformed_source_completes_with_ledger(warehouse_path, tmp_path):
    bad = tmp_path / "healthcaremagic.jsonl"
    expected = write_malformed_jsonl(bad)
    catalog = SourceCatalog(mode="sample", overrides={"healthcaremagic": str(bad)}, max_row_bytes=100_000)
    result = _materialize(instruct_prompt_rows, "healthcaremagic", warehouse_path, catalog)
    assert result.success
    checks = _checks(result)
    assert checks["rows_conserved"].passed
    assert checks["rows_conserved"].metadata["rows_in"].value == 28
    con = duckdb.connect(str(warehouse_path))
    ledger = dict(con.execute(
        "SELECT reason, count(*) FROM row_ledger WHERE asset = 'instruct_prompt_rows' AND partition = "
        "'healthcaremagic' GROUP BY 1").fetchall())
    assert ledger == expected
    assert con.execute("SELECT count(*) FROM instruct_prompt_rows").fetchone()[0] == 28 - sum(expected.values())
    md = _metadata(result)
    assert md["rejected/invalid_utf8"].value == 1 and "duplicate_id" in md["rejected_by_reason"].value
    detail = con.execute("SELECT detail FROM row_ledger WHERE reason = 'duplicate_id'").fetchone()[0]
    assert "(kept)" in detail


def test_too_small_partition_fails_blocking_check(warehouse_path):
    """The check runs on the staged rows, before the swap: the run fails and nothing is swapped in."""
    catalog = SourceCatalog(mode="sample", row_bounds={"afrimedqa": [1000, 5000]})
    result = _materialize(eval_items, "afrimedqa", warehouse_path, catalog, raise_on_error=False)
    check = _checks(result)["row_count_in_bounds"]
    assert not result.success and not result.get_asset_materialization_events()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["rows"].value == 174 and check.metadata["min_rows"].value == 1000
    assert not Warehouse(path=str(warehouse_path)).table_exists("eval_items")


def test_too_large_partition_only_warns(warehouse_path):
    catalog = SourceCatalog(mode="sample", row_bounds={"afrimedqa": [1, 100]})
    result = _materialize(eval_items, "afrimedqa", warehouse_path, catalog)
    check = _checks(result)["row_count_in_bounds"]
    assert result.success and not check.passed and check.severity == dg.AssetCheckSeverity.WARN


def test_failed_swap_keeps_previous_rows(warehouse_path, tmp_path):
    """A swap that fails half-way (the ledger file is missing) rolls back to the previous rows."""
    _materialize(eval_items, "afrimedqa", warehouse_path)
    wh = Warehouse(path=str(warehouse_path))
    with pytest.raises(duckdb.Error):
        wh.swap(Swap.source_partition("eval_items", "afrimedqa", tmp_path / "missing.parquet",
                                      tmp_path / "nope.parquet"), run_id="x")
    assert wh.fetch_one("SELECT count(*) FROM eval_items WHERE source = 'afrimedqa'")[0] == 174


def test_gpqa_without_offline_copy_materializes_empty(warehouse_path):
    result = _materialize(eval_items, "gpqa_diamond", warehouse_path)
    assert result.success and _metadata(result)["dagster/row_count"].value == 0


def test_every_source_asset_has_a_partition_per_registry_source():
    from iimed_assets.sources.registry import SOURCES

    keys = {k for a in SOURCE_ASSETS for k in a.partitions_def.get_partition_keys()}
    assert keys == {s.name for s in SOURCES}


def test_workspace_and_dg_load_the_code_location():
    """`dagster dev -w workspace.yaml` and `dg check defs` both load this code location."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    env = {**__import__("os").environ, "VIRTUAL_ENV": str(bindir.parent)}
    ws = subprocess.run([str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ws.returncode == 0 and "All code locations passed validation" in ws.stderr + ws.stdout, ws.stderr[-2000:]
    dgc = subprocess.run([str(bindir / "dg"), "check", "defs"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300)
    assert dgc.returncode == 0 and "All definitions loaded successfully" in dgc.stdout + dgc.stderr, dgc.stderr[-2000:]


HUB = Path(__file__).parent / "fixtures" / "hub"


def _hub_catalog(**kw):
    """Hub mode against the hub-layout fixtures; the fixtures are a few rows, so the row bounds are opened."""
    from iimed_assets.sources.registry import SOURCES

    return SourceCatalog(mode="hub", hub_mirror=str(HUB), row_bounds={s.name: [1, 1000] for s in SOURCES}, **kw)


def test_hub_partition_from_the_mirror_goes_through_rows_from_record(warehouse_path, monkeypatch):
    """Apollo in its hub layout: 3 items -> 3 rows + 1 unpaired question; rows in counts the extra pair."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _materialize(instruct_prompt_rows, "apollo_textbook_qa", warehouse_path, _hub_catalog())
    assert result.success
    checks = _checks(result)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    conserved = checks["rows_conserved"].metadata
    assert (conserved["rows_in"].value, conserved["rows_out"].value, conserved["ledger_rows"].value) == (4, 3, 1)
    md = _metadata(result)
    assert md["rows_read"].value == 3 and md["rows_from_expansion"].value == 1
    assert md["share_with_gold"].value == 1.0 and "hub-mirror:" in md["source"].value
    import json

    from iimed_assets.sources import rows_from_record

    items = json.loads((HUB / "FreedomIntelligence/ApolloCorpus/train/pretrain/medicalBook_en_qa.json").read_text())
    expected = [r for item in items if len(item) > 1 for r in rows_from_record("apollo_textbook_qa", item)]
    con = duckdb.connect(str(warehouse_path))
    got = con.execute("SELECT id, prompt, gold_answer, len(messages) FROM instruct_prompt_rows ORDER BY id").fetchall()
    assert got == sorted((r["id"], r["prompt"], r["gold_answer"], len(r["messages"])) for r in expected)
    assert con.execute("SELECT reason, row_id FROM row_ledger WHERE partition = 'apollo_textbook_qa'").fetchall() == [
        ("unpaired_question", "train/pretrain/medicalBook_en_qa.json:2")]
    con.close()
    # a filtered source shows what its filter left out, by value
    from iimed_assets.assets.sources import public_reasoning_rows

    result = _materialize(public_reasoning_rows, "general_thought_medical", warehouse_path, _hub_catalog())
    assert result.success and "| task='Engineering' | 1 |" in _metadata(result)["out_of_scope_values"].value


def test_wrong_mapping_fails_field_coverage_and_names_the_field(warehouse_path, tmp_path):
    """An R1 source whose file calls its reasoning column differently writes answers without <think>: blocked."""
    import json

    path = tmp_path / "dolphin.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"}],
                                        "reasoning_content": "thinking", "answer": "an answer"}) + "\n"
                            for i in range(20)))
    catalog = SourceCatalog(mode="sample", overrides={"dolphin_r1": str(path)})
    result = _materialize(r1_trace_rows, "dolphin_r1", warehouse_path, catalog, raise_on_error=False)
    assert not result.success
    check = _checks(result)["field_coverage"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "reasoning: 0.0% < 90%" in check.description
    assert check.metadata["share_reasoning"].value == 0.0 and "Question 0?" in check.metadata["examples"].value


def test_repeated_ids_block_the_partition(warehouse_path, tmp_path):
    """R1-Distill-SFT keyed by a column that repeats: 19 of 20 rows would be dropped as duplicates -> blocked."""
    import json

    path = tmp_path / "r1.jsonl"
    path.write_text("".join(json.dumps({"id": "same", "reannotated_messages": [
        {"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "<think>r</think>a"}]}) + "\n"
                            for i in range(20)))
    catalog = SourceCatalog(mode="sample", overrides={"r1_distill_sft": str(path)})
    result = _materialize(r1_trace_rows, "r1_distill_sft", warehouse_path, catalog, raise_on_error=False)
    assert not result.success
    check = _checks(result)["duplicate_ids_within_bound"]
    assert not check.passed and check.metadata["duplicate_rows"].value == 19
    assert check.metadata["duplicate_share"].value == 0.95 and "id key" in check.description


def test_probe_command_on_the_hub_mirror(monkeypatch, capsys, tmp_path):
    from iimed_assets.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IIMED_HUB_MIRROR", str(HUB))
    monkeypatch.delenv("IIMED_SOURCE_MODE", raising=False)
    rc = main(["sources", "--probe", "--rows", "5", "general_thought_medical", "m23k", "apollo_patient_qa",
               "evol_instruct_medical"])
    out = capsys.readouterr().out
    assert rc == 1 and "3 ok, 1 failed" in out
    assert "out of scope: task='Engineering' (1)" in out  # what the medical filter left out, by value
    m23k = out[out.index("m23k"):out.index("apollo_patient_qa")]
    assert "m23k" in m23k and " ok " in m23k and "reasoning 100% (min 90%)" in m23k
    assert "options: A. Phenytoin; B. Carbamazepine; C. Ethosuximide; D. Phenobarbitone" in m23k
    assert "read 1 items -> 2 rows" in out  # the Apollo dialogue: two pairs
    assert "evol_instruct_medical            FAILED" in out and "IIMED_SOURCE_EVOL_INSTRUCT_MEDICAL" in out
    # a local override in the hub layout is probed the same way; a mirror without the repo fails with the path
    monkeypatch.setenv("IIMED_HUB_MIRROR", str(tmp_path))
    monkeypatch.setenv("IIMED_SOURCE_MEDQA", str(HUB / "fzkuji/MedQA/med_qa_en_source/train-00000-of-00001.parquet"))
    assert main(["sources", "--probe", "medqa", "medmcqa"]) == 1
    out = capsys.readouterr().out
    assert "medqa                            ok" in out and "gold 100% (min 95%)" in out
    assert "medmcqa                          FAILED" in out and str(tmp_path / "openlifescienceai/medmcqa") in out
