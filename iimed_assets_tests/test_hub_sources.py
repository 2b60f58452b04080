"""The hub path on hub-layout fixtures: every hub source is read from a copy of its repo's file tree through
the same code as a full run (`datasets.load_dataset` with the entry's own config / data_files / split, or our
streaming readers), offline, and its known rows come out with the right prompt, options, gold answer,
reasoning and final answer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from iimed_assets.core.normalize import RowRejected, split_think
from iimed_assets.sources import rows_from_record
from iimed_assets.sources.ingest import ingest, staged_duplicates
from iimed_assets.sources.loaders import SourceUnavailable, iter_hub, iter_json_array
from iimed_assets.sources.registry import BY_NAME, PUBLISHED_SECTIONS, PUBLISHED_TOTAL, SOURCES, sources_in

HUB = Path(__file__).parent / "fixtures" / "hub"
HUB_SOURCES = [s for s in SOURCES if s.hf_id]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may touch the network: the mirror is a local tree."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _read(spec, tmp_path):
    result = ingest(iter_hub(spec, mirror=HUB), source=spec.name, section=spec.section, staging_dir=tmp_path)
    rows = pq.read_table(result.rows_path).to_pylist()
    ledger = pq.read_table(result.ledger_path).to_pylist()
    return result, rows, ledger


def _answer(row) -> tuple[str | None, str]:
    """(reasoning, final answer) of the row's own response."""
    last = row["messages"][-1]
    assert last["role"] == "assistant", row["messages"]
    reasoning, answer, closed = split_think(last["content"])
    assert closed
    return reasoning, answer


def _find(rows, prefix):
    found = [r for r in rows if r["prompt"].startswith(prefix) or (json.loads(r["meta"] or "{}").get("question") or
                                                                  "").startswith(prefix)]
    assert len(found) == 1, (prefix, [r["prompt"][:60] for r in rows])
    return found[0]


# source -> (native items, rows, ledger reasons, [(prompt prefix, expected fields)])
# expected fields: options (dict or None), gold, reasoning (prefix), answer (prefix), turns (roles), meta (subset)
EXPECTED = {
    "general_thought_medical": (3, 2, {"out_of_scope": 1}, [
        ("Which vitamin deficiency causes scurvy?", dict(options=None, gold="Vitamin C",
                                                         reasoning="Scurvy comes from a lack of ascorbic acid",
                                                         answer="Vitamin C (ascorbic acid) deficiency.",
                                                         meta={"task": "Medicine", "question_id": 101})),
        ("Which organelle makes ATP", dict(gold=None, reasoning="ATP synthase", answer="The mitochondrion.")),
    ]),
    "general_thought_r1": (3, 3, {}, [
        ("What is the torque", dict(gold="10 N m", reasoning="Torque = r F sin", answer="10 N m")),
    ]),
    "medical_r1_distill": (2, 2, {}, [
        ("A 30-year-old has a honey-coloured", dict(options=None, gold=None, reasoning="Honey-coloured crusts mean "
                                                    "impetigo", answer="**Staphylococcus aureus** (impetigo).")),
    ]),
    "medical_r1_distill_zh": (1, 1, {}, [
        ("患者男性", dict(reasoning="胸痛三天", answer="急性心肌梗死。", language="zh")),
    ]),
    "m23k": (2, 2, {}, [
        ("Drug of choice for absence seizures:", dict(
            options={"A": "Phenytoin", "B": "Carbamazepine", "C": "Ethosuximide", "D": "Phenobarbitone"}, gold="C",
            reasoning="Absence seizures: ethosuximide", answer="The drug of choice is ethosuximide.",
            meta={"source": "openlifescienceai/medmcqa", "answer_string": "Ethosuximide"})),
        ("Aspirin lowered event rates", dict(options={"A": "yes", "B": "maybe", "C": "no"}, gold="A")),
    ]),
    "medmcqa": (2, 2, {}, [
        ("Chronic urethral obstruction", dict(options={"A": "Hyperplasia", "B": "Hyperophy", "C": "Atrophy",
                                                       "D": "Dyplasia"}, gold="C", turns=["user"],
                                              meta={"subject_name": "Anatomy"})),
        ("Which vitamin is supplied from only animal source:", dict(gold="C")),
    ]),
    "medmcqa_validation": (1, 1, {}, [
        ("Which of the following is not true for myelinated", dict(gold="A")),
    ]),
    "medqa": (2, 2, {}, [
        ("A 23-year-old pregnant woman at 22 weeks", dict(
            options={"A": "Ampicillin", "B": "Ceftriaxone", "C": "Ciprofloxacin", "D": "Doxycycline",
                     "E": "Nitrofurantoin"}, gold="E", meta={"meta_info": "step2&3"})),
    ]),
    "medqa_usmle_4opt": (1, 1, {}, [
        ("A 67-year-old man with transitional cell", dict(
            options={"A": "Amifostine", "B": "Mesna", "C": "Leucovorin", "D": "Dexrazoxane"}, gold="A")),
    ]),
    "medqa_usmle_5opt": (1, 1, {}, [
        ("A 67-year-old man with transitional cell", dict(
            options={"A": "Amifostine", "B": "Mesna", "C": "Leucovorin", "D": "Dexrazoxane", "E": "Filgrastim"},
            gold="A")),
    ]),
    "pubmedqa_unlabeled": (2, 2, {}, [
        ("Naturopathy was compared", dict(gold=None, options=None, meta={
            "context": "Naturopathy was compared with conventional therapy in a cohort of women.",
            "long_answer": "Naturopathy appears to be an effective alternative."})),
        ("Older adults were randomised", dict(meta={
            "context": "Older adults were randomised to exercise or control.\nSleep quality improved."})),
    ]),
    "pubmedqa_labeled": (1, 1, {}, [
        ("Programmed cell death (PCD)", dict(gold="yes")),
    ]),
    "medreason": (4, 4, {}, [
        ("Which of the following is a feature of leukemoid", dict(
            options={"A": "Raised leukocyte alkaline phosphatase", "B": "Philadelphia chromosome",
                     "C": "Basophilia", "D": "Splenomegaly > 10 cm"}, gold="A",
            meta={"dataset_name": "medmcqa"})),
        ("A 45-year-old man has crushing chest pain", dict(gold="C")),
        ("Is low-dose aspirin associated", dict(options={"A": "Yes", "B": "No"}, gold="A")),
        ("How should a tension pneumothorax", dict(options=None,
                                                   gold="Immediate needle decompression, then a chest tube.")),
    ]),
    "synthetic_1": (2, 2, {}, [
        ("Why does hyperkalemia", dict(reasoning="High extracellular K+", answer="Faster phase-3",
                                       meta={"task_type": "llm_judgeable_groundtruth_similarity"})),
        ("Compute 17 * 3.", dict(reasoning="17 * 3 = 51, so 51.", answer="The answer is 51.")),  # no opening tag
    ]),
    "am_deepseek_r1_distilled": (3, 3, {}, [
        ("What electrolyte abnormality", dict(gold="Hyperkalemia", reasoning="Cell lysis releases potassium first.",
                                              answer="Hyperkalemia, with hyperphosphatemia and hyperuricemia.",
                                              meta={"source": "natural_reasoning"})),
        ("Integrate e^{-x} dx.", dict(reasoning="The antiderivative", answer="-e^{-x} + C")),  # tags, no info
    ]),
    "openthoughts2": (1, 1, {}, [
        ("Return your final response within \\boxed{}. What is the normal adult resting heart rate",
         dict(reasoning="Normal sinus rhythm is 60 to 100.", answer="\\boxed{60\\text{--}100}")),
    ]),
    "nemotron_science": (2, 1, {"out_of_scope": 1}, [
        ("Which enzyme unwinds DNA", dict(reasoning="The enzyme that separates the strands is helicase.",
                                          answer="The answer is (B).", meta={"reasoning": "on"})),
    ]),
    "dolphin_r1": (1, 1, {}, [
        ("What is the antidote for heparin", dict(reasoning="Heparin is neutralised by protamine sulfate.",
                                                  answer="Protamine sulfate.")),
    ]),
    "r1_distill_sft": (1, 1, {}, [
        ("Where does furosemide act", dict(reasoning="Loop diuretics act on the thick ascending limb.",
                                           answer="Furosemide inhibits NKCC2.", meta={"source_dataset":
                                                                                     "tulu-3-sft-mixture"})),
    ]),
    "apollo_textbook_qa": (3, 3, {"unpaired_question": 1}, [
        ("What are the classic signs of cardiac tamponade?", dict(
            gold="Beck's triad: hypotension, muffled heart sounds and raised jugular venous pressure.",
            turns=["user"], meta={"pair": 0, "pairs": 2})),
        ("What bedside sign accompanies it?", dict(gold="Pulsus paradoxus, a fall in systolic pressure of more "
                                                        "than 10 mmHg on inspiration.",
                                                   turns=["user", "assistant", "user"], meta={"pair": 1})),
        ("Which nerve is injured in wrist drop?", dict(gold="The radial nerve.", turns=["user"])),
    ]),
    "apollo_patient_qa": (1, 2, {}, [
        ("Can I take ibuprofen if I have a stomach ulcer?", dict(
            gold="Better not: NSAIDs can worsen ulcers. Paracetamol is safer for you.",
            turns=["user", "assistant", "user"])),
    ]),
    "apollo_guideline_qa": (1, 1, {}, [
        ("What HbA1c target", dict(gold="Below 7% (53 mmol/mol), individualised to the patient.", turns=["user"])),
    ]),
    "healthcaremagic": (2, 2, {}, [
        ("Hi doctor, I am 25 and have had a dry cough", dict(
            gold="Hi. A post-viral cough can last weeks. If it persists beyond eight weeks, get a chest X-ray.",
            turns=["system", "user"])),
    ]),
    "am_qwen3_instruction_following": (1, 1, {}, [
        ("List three symptoms of dehydration", dict(reasoning="Thirst, dark urine, dizziness.",
                                                    answer="- Thirst\n- Dark urine\n- Dizziness",
                                                    turns=["user", "assistant"],
                                                    meta={"category": "if",
                                                          "instruction_constrain": "exactly 3 bullet points"})),
    ]),
    "mmlu_medical": (6, 6, {}, [
        ("Which of the following is the body cavity", dict(
            options={"A": "Abdominal", "B": "Cranial", "C": "Pleural", "D": "Spinal"}, gold="B",
            meta={"subject": "anatomy"})),
    ]),
    "mmlu_pro_health": (2, 1, {"out_of_scope": 1}, [
        ("Which of the following is the most common cause of community-acquired", dict(gold="B")),
    ]),
    "medxpertqa_text": (1, 1, {}, [
        ("A 60-year-old has vertigo", dict(gold="A", meta={"question_type": "Reasoning"})),
    ]),
    "medbullets_op4": (1, 1, {}, [
        ("A 6-year-old boy has cola-coloured urine", dict(
            options={"A": "Observation", "B": "Ultrasound of the kidneys", "C": "Renal biopsy", "D": "CT urogram"},
            gold="A")),
    ]),
    "medbullets_op5": (1, 1, {}, [("A 6-year-old boy has cola-coloured urine", dict(gold="A"))]),
    "afrimedqa": (3, 2, {"out_of_scope": 1}, [
        ("Which drug is first-line for uncomplicated falciparum malaria in Nigeria?", dict(
            options={"A": "Chloroquine", "B": "Artemether-lumefantrine", "C": "Quinine", "D": "Primaquine"},
            gold="B", meta={"tier": "expert"})),
        ("Which of these are signs of severe malaria?", dict(gold="A,C")),  # a multi-answer MCQ; "n/a" dropped
    ]),
    "liveqa_med": (2, 2, {}, [
        ("What is the relationship between Noonan syndrome", dict(
            gold="Noonan syndrome is a genetic disorder; kidney anomalies occur in some patients.",
            meta={"original_question": "noonan syndrome and polycystic kidneys? my son has both"})),
        ("What is the recommended vitamin D dose for children?", dict(gold="Most children need 600 IU a day.")),
    ]),
    "medicationqa": (2, 1, {"empty_prompt": 1}, [
        ("how does rivatigmine and otc sleep medicine interact", dict(gold="tell your doctor and pharmacist what "
                                                                           "other medications you take.")),
    ]),
    "gpqa_diamond": (1, 1, {}, [("A fixture question about enzyme kinetics", dict(gold="Km rises"))]),
}


def test_every_hub_source_has_a_fixture_and_expectations():
    assert {s.name for s in HUB_SOURCES} == set(EXPECTED)
    for spec in HUB_SOURCES:
        assert (HUB / spec.hf_id).is_dir(), spec.name
        for name in spec.files:
            assert (HUB / spec.hf_id / name).is_file(), (spec.name, name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hub_layout_loads_the_right_rows(name, tmp_path):
    spec = BY_NAME[name]
    items, n_rows, ledger_reasons, known = EXPECTED[name]
    result, rows, ledger = _read(spec, tmp_path)
    assert (result.rows_read, result.rows_staged) == (items, n_rows)
    assert {r: sum(1 for x in ledger if x["reason"] == r) for r in {x["reason"] for x in ledger}} == ledger_reasons
    assert result.rows_in == result.rows_staged + len(ledger)
    assert not result.coverage.shortfalls(spec.expectations(hub_layout=True)), result.coverage.shares()
    assert staged_duplicates(result.rows_path)[0] == 0
    assert all(r["source"] == name and r["section"] == spec.section for r in rows)
    for prefix, want in known:
        row = _find(rows, prefix)
        if "options" in want:
            assert (dict(row["options"]) if row["options"] else None) == want["options"]
        if "gold" in want:
            assert row["gold_answer"] == want["gold"]
        if "turns" in want:
            assert [m["role"] for m in row["messages"]] == want["turns"]
        if "reasoning" in want or "answer" in want:
            reasoning, answer = _answer(row)
            assert reasoning.startswith(want.get("reasoning", "")), reasoning
            assert answer.startswith(want.get("answer", "")), answer
        if "language" in want:
            assert row["language"] == want["language"]
        meta = json.loads(row["meta"] or "{}")
        for key, value in want.get("meta", {}).items():
            assert meta.get(key) == value, (key, meta)


@pytest.mark.parametrize("name", ["medreason", "apollo_textbook_qa", "am_deepseek_r1_distilled", "afrimedqa",
                                  "nemotron_science", "medmcqa"])
def test_rows_from_record_is_what_the_hub_path_writes(name, tmp_path):
    """The loader goes through `rows_from_record`: its rows for every native record are the staged rows."""
    spec = BY_NAME[name]
    _, rows, _ = _read(spec, tmp_path)
    expected = []
    for item in iter_hub(spec, mirror=HUB):
        try:
            expected.extend(rows_from_record(name, item.record))
        except RowRejected:
            pass
    strip = lambda r: {k: (list(map(tuple, v)) if k == "options" and v else v) for k, v in r.items()  # noqa: E731
                       if k != "_ordinal"}
    assert [strip(r) for r in rows] == [strip(r) for r in expected]


def test_rows_from_record_api():
    apollo = rows_from_record("apollo_patient_qa", ["I have a rash.", "Since when?", "Two days.", "Use a cream.",
                                                    "And then?"])
    assert [r["prompt"] for r in apollo] == ["I have a rash.", "Two days."]
    assert [r["gold_answer"] for r in apollo] == ["Since when?", "Use a cream."]
    assert len({r["id"] for r in apollo}) == 2
    assert rows_from_record("apollo_patient_qa", ["I have a rash.", "Since when?"])[0]["id"] == apollo[0]["id"]  # stable
    # out of scope -> [] (a run ledgers it as out_of_scope)
    assert rows_from_record("mmlu_pro_health", {"question_id": 1, "question": "q", "options": ["a", "b"],
                                                "answer": "A", "category": "math"}) == []
    with pytest.raises(RowRejected) as err:
        rows_from_record("medmcqa", {"id": "x", "question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
                                     "cop": -1})  # the test split's missing label
    assert err.value.reason == "wrong_type"
    with pytest.raises(RowRejected) as err:
        rows_from_record("apollo_textbook_qa", {"not": "a list"})
    assert err.value.reason == "wrong_type"
    with pytest.raises(KeyError):
        rows_from_record("no_such_source", {})


def test_medreason_ids_do_not_collide_across_its_source_sets():
    a = rows_from_record("medreason", {"dataset_name": "medmcqa", "id_in_dataset": 7, "question": "q1",
                                       "answer": "x", "options": ""})
    b = rows_from_record("medreason", {"dataset_name": "medqa", "id_in_dataset": 7, "question": "q2",
                                       "answer": "y", "options": ""})
    assert a[0]["id"] != b[0]["id"]


def test_entries_read_only_their_own_files(tmp_path):
    """Other configs, splits and category files of the same repo never leak in."""
    prompts = lambda n: [r["prompt"] for r in _read(BY_NAME[n], tmp_path / n)[1]]  # noqa: E731
    assert not any("a math prompt" in p or "a code prompt" in p for p in prompts("nemotron_science"))
    assert not any(p.endswith(" prompt") for p in prompts("am_qwen3_instruction_following"))
    assert "flash prompt" not in prompts("dolphin_r1")
    assert not any("exam MCQ" in p for p in prompts("apollo_patient_qa"))
    assert not any(p.startswith("A dev question") for p in prompts("medxpertqa_text"))
    assert not any("carcinoid" in p for p in prompts("medmcqa"))  # the unlabelled test split


def test_missing_mirror_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceUnavailable, match="fzkuji/MedQA"):
        next(iter_hub(BY_NAME["medqa"], mirror=tmp_path))
    with pytest.raises(SourceUnavailable, match="IIMED_SOURCE_EVOL_INSTRUCT_MEDICAL"):
        next(iter_hub(BY_NAME["evol_instruct_medical"], mirror=HUB))


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_json_array_streams_across_chunk_boundaries(tmp_path, chunk):
    data = [["q1 ü", "a1"], ["q2", "a2", "q3", "a3"], [], {"k": 12345}, 67890]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    with open(path, "rb") as fh:
        got = list(iter_json_array(fh, chunk_bytes=chunk))
    assert [(i, item) for i, item, _ in got] == list(enumerate(data)) and all(e is None for *_, e in got)


def test_json_array_syntax_error_ends_with_a_ledger_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[["q", "a"], ["q2" "a2"], ["q3", "a3"]]')
    with open(path, "rb") as fh:
        got = list(iter_json_array(fh, chunk_bytes=4))
    assert got[0] == (0, ["q", "a"], None)
    assert got[1][0] == 1 and got[1][2][0] == "invalid_json" and len(got) == 2


def test_committed_fixtures_match_their_generator(tmp_path):
    """The fixture tree is what make_fixtures.py writes (parquet compared by content and features metadata)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", HUB / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = {p.relative_to(tmp_path) for p in module.build(tmp_path)}
    committed = {p.relative_to(HUB) for p in HUB.rglob("*") if p.is_file() and p.suffix != ".py"
                 and "__pycache__" not in p.parts}
    assert fresh == committed
    for rel in fresh:
        a, b = tmp_path / rel, HUB / rel
        if rel.suffix == ".parquet":
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert ta.equals(tb) and ta.schema.metadata == tb.schema.metadata, rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel
    assert sum((HUB / r).stat().st_size for r in committed) < 400_000  # tiny: a few KB per source


def test_published_figures():
    assert PUBLISHED_TOTAL == 2_197_741
    assert PUBLISHED_SECTIONS["qa_seed"] == 873_497 and PUBLISHED_SECTIONS["instruct"] == 1_025_903
    # the section-4 sources the card counts add up to its section figure
    assert sum(s.published_rows for s in sources_in("instruct")) == PUBLISHED_SECTIONS["instruct"]
