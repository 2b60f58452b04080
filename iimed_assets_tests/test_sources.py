"""Registry, loaders and staging, without Dagster: the pieces every source partition is built from."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from iimed_assets.core.normalize import FieldMap
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.defaults import catalog_from_env
from iimed_assets.sources.ingest import FieldMappingError, ingest
from iimed_assets.sources.loaders import SAMPLE_DIR, SourceUnavailable, iter_jsonl, iter_local, iter_sample
from iimed_assets.sources.registry import SOURCES, get_source, sources_in

from .conftest import write_malformed_jsonl

CARD_SOURCES = {
    "public_reasoning": {"general_thought_medical", "medical_r1_distill", "medical_r1_distill_zh", "m23k"},
    "qa_seed": {"medmcqa", "medqa", "pubmedqa_unlabeled", "medreason"},
    "r1_traces": {"synthetic_1", "general_thought_r1", "am_deepseek_r1_distilled", "openthoughts2",
                  "nemotron_science", "dolphin_r1", "r1_distill_sft"},
    "instruct": {"apollo_textbook_qa", "apollo_patient_qa", "apollo_guideline_qa", "healthcaremagic",
                 "evol_instruct_medical", "am_qwen3_instruction_following"},
    "eval": {"medmcqa_validation", "medqa_usmle_4opt", "medqa_usmle_5opt", "pubmedqa_labeled", "mmlu_medical",
             "mmlu_pro_health", "medxpertqa_text", "medbullets_op4", "medbullets_op5", "gpqa_diamond"},
}


@pytest.mark.parametrize("section", sorted(CARD_SOURCES))
def test_registry_names_every_card_source(section):
    names = {s.name for s in sources_in(section)}
    assert CARD_SOURCES[section] <= names


def test_registry_entries_are_complete():
    for spec in SOURCES:
        assert spec.licence, spec.name
        assert spec.fields.prompt or spec.fields.conversation, spec.name
        assert spec.hf_id or "IIMED_SOURCE_" in spec.notes, f"{spec.name}: no hub id and no local-file note"
        for sl in spec.sample:
            assert (SAMPLE_DIR / sl.path).exists(), f"{spec.name}: bundled file {sl.path} missing"
            assert (SAMPLE_DIR / sl.path).parent.joinpath("SOURCE.md").exists(), sl.path


def test_evaluation_files_never_feed_training_sections():
    eval_files = {sl.path for s in sources_in("eval") for sl in s.sample}
    train_files = {sl.path for s in SOURCES if s.section != "eval" for sl in s.sample}
    assert eval_files and not (eval_files & train_files)


def test_every_source_but_gated_ones_has_an_offline_sample():
    missing = [s.name for s in SOURCES if not s.sample]
    assert missing == ["gpqa_diamond"]


def _lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@pytest.mark.parametrize("spec", SOURCES, ids=lambda s: s.name)
def test_bundled_sample_normalises_cleanly(spec, tmp_path):
    """Every bundled slice maps into sample rows with unique ids; rejections are only real-data problems."""
    result = ingest(iter_sample(spec), source=spec.name, section=spec.section, staging_dir=tmp_path)
    expected = sum(min(sl.stop or 10**9, _lines(SAMPLE_DIR / sl.path)) - sl.start for sl in spec.sample)
    assert result.rows_read == expected
    assert result.rows_read == result.rows_staged + sum(result.rejected.values())
    assert set(result.rejected) <= {"bad_gold_answer"}, result.rejected
    assert result.rows_staged >= 0.98 * result.rows_read, (spec.name, result.rejected)
    ids = pq.read_table(result.rows_path, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"{spec.name}: duplicate ids in the bundled sample"


def test_sample_slices_read_the_right_rows(tmp_path):
    spec = get_source("medical_r1_distill")  # demo_data rows [50, 100)
    items = list(iter_sample(spec))
    assert len(items) == 50
    with open(SAMPLE_DIR / "medical_o1_demo/demo_data.jsonl") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    assert items[0].record == lines[50] and items[-1].record == lines[99]


def test_malformed_file_is_ledgered_not_fatal(tmp_path):
    path = tmp_path / "bad.jsonl"
    expected = write_malformed_jsonl(path)
    fm = get_source("healthcaremagic").fields
    result = ingest(iter_local(path, fm, max_row_bytes=100_000), source="healthcaremagic", section="instruct",
                    staging_dir=tmp_path / "stage")
    ledger = pq.read_table(result.ledger_path).to_pylist()
    reasons = Counter(r["reason"] for r in ledger)
    expected_loader = {k: v for k, v in expected.items() if k != "duplicate_id"}  # resolved in the warehouse
    assert dict(reasons) == expected_loader
    assert result.rows_read == 28 and result.rows_staged == 21
    # every ledger row points back to its line
    assert all(r["row_id"].startswith("bad.jsonl:") for r in ledger)
    by_reason = {r["reason"]: r for r in ledger}
    assert by_reason["invalid_utf8"]["row_id"] == "bad.jsonl:16"


def test_wrong_field_map_is_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(5)) + "\n")
    with pytest.raises(FieldMappingError, match="question"):
        ingest(iter_local(path, FieldMap(prompt="prompt_text")), source="s", section="qa_seed", staging_dir=tmp_path / "s")


def test_local_parquet_and_gzip_mirrors(tmp_path):
    import pyarrow as pa

    recs = [{"question": f"What causes symptom {i}?", "answer": "a"} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "part-0.parquet")
    with gzip.open(tmp_path / "part-1.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in recs[:3]) + "\n")
    fm = FieldMap(prompt="question", gold_answer="answer")
    items = list(iter_local(tmp_path, fm))
    assert len(items) == 10 and all(i.error is None for i in items)


def test_local_zstd_jsonl(tmp_path):
    import zstandard

    recs = [{"question": f"What causes symptom {i}?", "answer": "a"} for i in range(4)]
    (tmp_path / "part.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in recs).encode()))
    items = list(iter_local(tmp_path, FieldMap(prompt="question", gold_answer="answer")))
    assert [i.record for i in items] == recs and items[0].locator == "part.jsonl.zst:1"


def test_missing_local_file_is_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable):
        list(iter_local(tmp_path / "nope.jsonl", FieldMap(prompt="q")))


def test_jsonl_window(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps({"q": str(i)}) + "\n" + ("\n" if i == 2 else "") for i in range(6)))
    got = [i.record["q"] for i in iter_jsonl(path, FieldMap(prompt="q"), start=2, stop=4)]
    assert got == ["2", "3"]


def test_catalog_precedence(monkeypatch, tmp_path):
    """Precedence: a local file for one source, then the hub mirror, then the hub, then the bundled sample. The
    environment is read where the definitions build the catalog, so each step builds it again."""
    monkeypatch.delenv("IIMED_SOURCE_MODE", raising=False)
    monkeypatch.delenv("IIMED_HUB_MIRROR", raising=False)
    monkeypatch.delenv("IIMED_SOURCE_MEDQA", raising=False)
    cat = catalog_from_env()
    assert cat.resolved_mode() == "sample" and cat.origin("medqa").startswith("sample:")
    monkeypatch.setenv("IIMED_SOURCE_MODE", "hub")
    assert cat.origin("medqa").startswith("sample:")  # a built catalog keeps its config
    cat = catalog_from_env()
    assert cat.origin("medqa") == "hub:fzkuji/MedQA [med_qa_en_source] split=train"
    assert cat.origin("apollo_patient_qa") == "hub:FreedomIntelligence/ApolloCorpus files=train/sft/medicalPatient_en.json"
    monkeypatch.setenv("IIMED_HUB_MIRROR", str(tmp_path / "mirror"))
    cat = catalog_from_env()
    assert cat.origin("medqa") == f"hub-mirror:{tmp_path / 'mirror' / 'fzkuji/MedQA'} [med_qa_en_source] split=train"
    monkeypatch.setenv("IIMED_SOURCE_MEDQA", str(tmp_path / "medqa.parquet"))
    cat = catalog_from_env()
    assert cat.origin("medqa") == f"local:{tmp_path / 'medqa.parquet'}"
    assert cat.origin("medmcqa").startswith("hub-mirror:")  # the override is for one source only
    assert SourceCatalog(overrides={"medqa": "/x.jsonl"}).origin("medqa") == "local:/x.jsonl"
    with pytest.raises(ValueError):
        SourceCatalog(mode="cloud").resolved_mode()


def test_catalog_bounds(monkeypatch):
    monkeypatch.delenv("IIMED_SOURCE_MODE", raising=False)
    monkeypatch.delenv("IIMED_SOURCE_MAX_ROWS", raising=False)
    assert catalog_from_env().bounds(get_source("medqa")) == (1, None)
    assert catalog_from_env().bounds(get_source("gpqa_diamond")) == (0, None)
    # hub: the real size within the entry's tolerance (1,273 +- 1%)
    assert SourceCatalog(mode="hub").bounds(get_source("medqa_usmle_4opt")) == (1260, 1286)
    assert SourceCatalog(mode="hub").bounds(get_source("evol_instruct_medical")) == (1, None)  # size unknown
    assert SourceCatalog(mode="hub", max_rows=100).bounds(get_source("medqa_usmle_4opt")) == (1, 100)
    assert SourceCatalog(row_bounds={"medqa": [5, 9]}).bounds(get_source("medqa")) == (5, 9)


def test_hub_source_without_hub_copy_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("IIMED_SOURCE_MODE", "hub")
    with pytest.raises(SourceUnavailable, match="IIMED_SOURCE_EVOL_INSTRUCT_MEDICAL"):
        list(catalog_from_env().read("evol_instruct_medical"))


def test_known_overlap_rows_are_in_the_sample():
    """The 3 HuatuoGPT-o1 demo questions identical to MedMCQA dev must reach the pipeline (decontam proof)."""
    demo = [json.loads(l) for l in open(SAMPLE_DIR / "medical_o1_demo/demo_data.jsonl") if l.strip()]
    dev = {json.loads(l)["question"].split("\nAnswer Choices:")[0].strip()
           for l in open(SAMPLE_DIR / "medmcqa/dev.jsonl") if l.strip()}
    overlap = [i for i, r in enumerate(demo) if r["question"].strip() in dev]
    assert len(overlap) == 3


def test_readme_lists_every_source_with_its_hub_repo():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for spec in SOURCES:
        assert f"| `{spec.name}` | {spec.section} | `{spec.hf_id or 'local file only'}` |" in readme, spec.name


def test_every_entry_cites_its_schema_and_says_its_size():
    from iimed_assets.core.adapters import ADAPTERS
    from iimed_assets.core.coverage import FIELDS
    from iimed_assets.sources.registry import READERS

    for spec in SOURCES:
        assert len(spec.evidence) > 40, spec.name
        assert spec.expected_rows or spec.expected_rows_basis.startswith("unknown"), spec.name
        assert spec.reader in READERS and (spec.reader == "datasets") != bool(spec.files), spec.name
        assert spec.adapter is None or spec.adapter in ADAPTERS, spec.name
        assert {f for f, _ in spec.expects + spec.sample_expects} <= set(FIELDS), spec.name
        assert spec.expects, f"{spec.name}: declares no field coverage for the hub layout"


def test_sample_readme_names_every_stand_in():
    """sources/sample/README.md (written by scripts/build_sample.py) matches the registry's titles and notes."""
    readme = (SAMPLE_DIR / "README.md").read_text()
    for spec in SOURCES:
        assert f"| `{spec.name}` ({spec.title}) | {spec.section} | {spec.sample_note or '-'} |" in readme, spec.name
