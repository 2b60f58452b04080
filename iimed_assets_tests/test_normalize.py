"""Pure normalisation: field maps, options, think blocks, ids — tested directly on real record shapes."""

from __future__ import annotations

import json

import pytest

from iimed_assets.core.normalize import (
    FieldMap,
    RowRejected,
    assistant_content,
    detect_language,
    get_path,
    gold_to_letter,
    normalize_record,
    options_from_text,
    parse_options,
    split_labeled,
    split_think,
)
from iimed_assets.core.schema import make_row_id


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nreason\n</think>\n\nThe answer is B", ("reason", "The answer is B", True)),
        ("no reasoning here", (None, "no reasoning here", True)),
        ("<think>cut off mid", ("cut off mid", "", False)),
        ("implicit open</think> answer", ("implicit open", "answer", True)),
    ],
)
def test_split_think(text, expected):
    assert split_think(text) == expected


def test_assistant_content_roundtrips_through_split_think():
    content = assistant_content("step 1\nstep 2", "Final: C")
    assert content.startswith("<think>\n") and "</think>\n\nFinal: C" in content
    assert split_think(content) == ("step 1\nstep 2", "Final: C", True)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"A": "x", "B": "y"}, {"A": "x", "B": "y"}),
        (["x", "y", "z"], {"A": "x", "B": "y", "C": "z"}),
        ([{"label": "A", "text": "x"}, {"label": "B", "text": "y"}], {"A": "x", "B": "y"}),
        ([{"letter": "A", "content": "x"}], {"A": "x"}),
        ("[{'letter': 'A', 'content': 'x'}, {'letter': 'B', 'content': 'y'}]", {"A": "x", "B": "y"}),
        ({"A": "x", "E": "n/a"}, {"A": "x"}),
        (None, None),
    ],
)
def test_parse_options_shapes(value, expected):
    assert parse_options(value) == expected


def test_parse_options_rejects_garbage():
    with pytest.raises(RowRejected) as err:
        parse_options(42)
    assert err.value.reason == "wrong_type"


def test_options_from_text_answer_choices_block():
    text = ("Which of the following is not true for myelinated nerve fibers:\nAnswer Choices: (A) Impulse is "
            "slower (B) Membrane currents at nodes (C) Saltatory conduction (D) Local anesthesia")
    stem, opts = options_from_text(text)
    assert stem == "Which of the following is not true for myelinated nerve fibers:"
    assert opts == {"A": "Impulse is slower", "B": "Membrane currents at nodes", "C": "Saltatory conduction",
                    "D": "Local anesthesia"}


def test_options_from_text_option_lines():
    stem, opts = options_from_text("Q?\nOption A:Radial nerve\nOption B: Ulnar\nOption C:x\nOption D:y\n")
    assert stem == "Q?" and list(opts) == ["A", "B", "C", "D"] and opts["A"] == "Radial nerve"


def test_options_from_text_leaves_plain_text_alone():
    assert options_from_text("What is (A) in this figure?") == ("What is (A) in this figure?", None)


@pytest.mark.parametrize(
    "value, fmt, options, expected",
    [
        ("C", "letter", {"A": "a", "B": "b", "C": "c"}, "C"),
        (["A"], "letter", {"A": "a"}, "A"),
        (2, "index0", {"A": "a", "B": "b", "C": "c"}, "C"),
        ("Answer: (A)", "answer_tag", {"A": "a"}, "A"),
        ("Placing the infant supine.", "option_text", {"A": "placing the infant  supine", "B": "b"}, "A"),
        ("free text", "text", None, "free text"),
    ],
)
def test_gold_to_letter(value, fmt, options, expected):
    assert gold_to_letter(value, fmt, options) == expected


def test_gold_option_text_without_match_is_rejected():
    with pytest.raises(RowRejected):
        gold_to_letter("nothing like it", "option_text", {"A": "a"})


def test_split_labeled():
    assert split_labeled("CONTEXT: some study.\nQUESTION: Does it work?") == {
        "context": "some study.", "question": "Does it work?"}


def test_get_path_nested_and_indexed():
    rec = {"question": {"stem": "s", "choices": [{"text": "t0"}, {"text": "t1"}]}}
    assert get_path(rec, "question.stem") == "s"
    assert get_path(rec, "question.choices.1.text") == "t1"
    assert get_path(rec, "question.missing") is None
    assert get_path(["q", "a"], "1") == "a"


def test_detect_language():
    assert detect_language("患者男性，45岁，出现胸痛三天", "en") == "zh"
    assert detect_language("A 45-year-old man with chest pain", "en") == "en"


def test_row_ids_are_stable_and_source_scoped():
    assert make_row_id("medqa", 7) == make_row_id("medqa", "7")
    assert make_row_id("medqa", 7) != make_row_id("medmcqa", 7)
    assert len(make_row_id("x", "y")) == 24


# --- whole records, in the native layouts of the bundled files --------------------------------------

R1_TRACE = {
    "realidx": 0, "question": "A 64-year-old man presents with headache. Which drug?",
    "options": {"A": "Acetazolamide", "B": "Amitriptyline"}, "answer_idx": "A",
    "completion": "<think>\nAngle closure.\n</think>\n\nThe answer is A", "predicted_answer": "A",
}


def test_r1_trace_record():
    fm = FieldMap(id="realidx", prompt="question", options="options", response="completion",
                  gold_answer="answer_idx", gold_format="letter", meta=("predicted_answer",))
    row = normalize_record(R1_TRACE, fm, source="dolphin_r1", section="r1_traces")
    assert row["id"] == make_row_id("dolphin_r1", 0)
    assert row["prompt"] == "A 64-year-old man presents with headache. Which drug?\n\nA. Acetazolamide\nB. Amitriptyline"
    assert row["messages"][0] == {"role": "user", "content": row["prompt"]}
    assert row["messages"][1]["content"] == "<think>\nAngle closure.\n</think>\n\nThe answer is A"
    assert row["gold_answer"] == "A"
    assert row["options"] == [("A", "Acetazolamide"), ("B", "Amitriptyline")]
    meta = json.loads(row["meta"])
    assert meta["question"].startswith("A 64-year-old") and meta["predicted_answer"] == "A"


def test_cut_off_trace_is_kept_and_marked():
    rec = dict(R1_TRACE, completion="<think>\nstill thinking")
    fm = FieldMap(prompt="question", response="completion")
    row = normalize_record(rec, fm, source="s", section="r1_traces")
    assert json.loads(row["meta"])["think_closed"] is False
    assert row["messages"][-1]["content"] == "<think>\nstill thinking"


def test_separate_reasoning_field_is_wrapped_in_think():
    rec = {"Question": "Q?", "Complex_CoT": "Let me think.", "Response": "Answer."}
    fm = FieldMap(prompt="Question", reasoning="Complex_CoT", response="Response")
    row = normalize_record(rec, fm, source="s", section="public_reasoning")
    assert row["messages"][-1] == {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nAnswer."}


def test_sharegpt_conversation():
    rec = {"conversations": [{"from": "human", "value": "hi?"}, {"from": "gpt", "value": "<think>x</think>ok"}]}
    row = normalize_record(rec, FieldMap(conversation="conversations"), source="s", section="r1_traces")
    assert row["prompt"] == "hi?"
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_conversation_plus_separate_output():
    rec = {"input": [{"role": "user", "content": "Why?"}], "output": "<think>r</think>because"}
    row = normalize_record(rec, FieldMap(conversation="input", response="output"), source="s", section="r1_traces")
    assert row["messages"][-1] == {"role": "assistant", "content": "<think>\nr\n</think>\n\nbecause"}


def test_selfbiorag_medmcqa_instruction_row():
    rec = {"id": "seed_task_1", "instances": {
        "input": "QUESTION: Which is not true about thoracic outlet syndrome?\nOption A:Radial nerve is commonly "
                 "affected\nOption B:Neurological features\nOption C:Resection of 1st rib\nOption D:Positive Adson's test\n",
        "output": "Answer: (A)"}}
    fm = FieldMap(id="id", prompt="instances.input", labeled_prompt=True, options_in_prompt=True,
                  gold_answer="instances.output", gold_format="answer_tag")
    row = normalize_record(rec, fm, source="medmcqa", section="qa_seed")
    assert row["gold_answer"] == "A"
    assert json.loads(row["meta"])["question"] == "Which is not true about thoracic outlet syndrome?"
    assert dict(row["options"])["D"] == "Positive Adson's test"


def test_pubmedqa_context_goes_to_meta_and_user_turn():
    rec = {"pmid": "1", "QUESTION": "Does X help?", "CONTEXTS": ["Background.", "Results."], "final_decision": "yes"}
    fm = FieldMap(id="pmid", prompt="QUESTION", context="CONTEXTS", gold_answer="final_decision")
    row = normalize_record(rec, fm, source="pubmedqa_labeled", section="eval")
    assert json.loads(row["meta"])["context"] == "Background.\nResults."
    assert row["prompt"].endswith("Does X help?") and row["prompt"].startswith("Background.")
    assert row["gold_answer"] == "yes"


@pytest.mark.parametrize(
    "record, fm, reason",
    [
        ({"q": ""}, FieldMap(prompt="q"), "empty_prompt"),
        ({"q": "   \n"}, FieldMap(prompt="q"), "empty_prompt"),
        ({"other": "x"}, FieldMap(prompt="q"), "missing_prompt"),
        ({"q": None}, FieldMap(prompt="q"), "missing_prompt"),
        ({"q": {"nested": 1}}, FieldMap(prompt="q"), "wrong_type"),
        ("just a string", FieldMap(prompt="q"), "wrong_type"),
        ({"q": "x", "task": "Math"}, FieldMap(prompt="q", where=(("task", ("Medicine",)),)), "out_of_scope"),
        ({"m": "not a list"}, FieldMap(conversation="m"), "bad_messages"),
        ({"m": [{"role": "assistant", "content": "x"}]}, FieldMap(conversation="m"), "missing_prompt"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(record, fm, reason):
    with pytest.raises(RowRejected) as err:
        normalize_record(record, fm, source="s", section="qa_seed")
    assert err.value.reason == reason


def test_content_hash_id_when_source_has_no_id():
    fm = FieldMap(prompt="q", response="a")
    a = normalize_record({"q": "x", "a": "y"}, fm, source="s", section="r1_traces")
    b = normalize_record({"q": "x", "a": "y"}, fm, source="s", section="r1_traces")
    c = normalize_record({"q": "x", "a": "z"}, fm, source="s", section="r1_traces")
    assert a["id"] == b["id"] != c["id"]


# --- hub record shapes: options as text, keyed options, composite ids, regex scopes -------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("Answer Choices:\nA. Yes\nB. No", {"A": "Yes", "B": "No"}),  # MedReason
        ("A. x\nB. y\nC. z", {"A": "x", "B": "y", "C": "z"}),
        ('{"option1": "a", "option2": "b", "option3": "", "option4": "n/a"}', {"A": "a", "B": "b"}),  # AfriMed-QA
        ({"option1": "a", "option3": "c"}, {"A": "a", "C": "c"}),  # a key names its letter, gaps included
        ([{"key": "A", "value": "x"}, {"key": "B", "value": "y"}], {"A": "x", "B": "y"}),  # bigbio med_qa source
    ],
)
def test_parse_options_hub_shapes(value, expected):
    assert parse_options(value) == expected


def test_options_string_without_options_is_rejected():
    with pytest.raises(RowRejected):
        parse_options("no options in here")


def test_options_from_text_trailing_letter_lines():
    text = "Aspirin lowered event rates.\nDoes aspirin prevent events?\nA. yes\nB. maybe\nC. no"
    assert options_from_text(text) == ("Aspirin lowered event rates.\nDoes aspirin prevent events?",
                                       {"A": "yes", "B": "maybe", "C": "no"})
    assert options_from_text("Stem\nA. x\nC. y") == ("Stem\nA. x\nC. y", None)  # not A, B, ...


@pytest.mark.parametrize("value, options, expected", [
    ("option2", {"A": "a", "B": "b"}, "B"), ("option1,option3", {"A": "a", "B": "b", "C": "c"}, "A,C")])
def test_gold_option_key(value, options, expected):
    assert gold_to_letter(value, "option_key", options) == expected


def test_gold_option_key_naming_no_option_is_rejected():
    with pytest.raises(RowRejected) as err:
        gold_to_letter("option5", "option_key", {"A": "a", "B": "b"})
    assert err.value.reason == "bad_gold_answer"


def test_empty_text_gold_is_no_gold():
    assert gold_to_letter("  ", "text", None) is None


def test_composite_native_id_and_regex_scope():
    import re

    fm = FieldMap(id=("set", "idx"), prompt="q", where=(("task", re.compile(r"medic|biolog", re.I)),))
    a = normalize_record({"set": "medqa", "idx": 7, "q": "x", "task": "Medicine"}, fm, source="s", section="qa_seed")
    b = normalize_record({"set": "medmcqa", "idx": 7, "q": "x", "task": "Human Biology"}, fm, source="s",
                         section="qa_seed")
    assert a["id"] == make_row_id("s", "medqa/7") != b["id"]
    with pytest.raises(RowRejected) as err:
        normalize_record({"set": "x", "idx": 1, "q": "x", "task": "Engineering"}, fm, source="s", section="qa_seed")
    assert err.value.reason == "out_of_scope" and "Engineering" in err.value.detail


def test_conversation_assistant_turn_takes_the_contract_form():
    rec = {"m": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "2 and 2 make 4.</think>4"}]}
    row = normalize_record(rec, FieldMap(conversation="m"), source="s", section="r1_traces")
    assert row["messages"][-1]["content"] == "<think>\n2 and 2 make 4.\n</think>\n\n4"


# --- record adapters ----------------------------------------------------------------------------------

from iimed_assets.core.adapters import am_messages, apollo_qa_pairs, liveqa_trec2017, medreason_record  # noqa: E402
from iimed_assets.core.coverage import FieldCoverage, fields_present  # noqa: E402


def test_apollo_pairs_keep_their_dialogue_and_ledger_an_unpaired_question():
    out = apollo_qa_pairs(["q1", "a1", "q2", "a2", "q3"])
    assert [o["messages"][-1]["content"] for o in out[:2]] == ["q1", "q2"]
    assert [m["role"] for m in out[1]["messages"]] == ["user", "assistant", "user"]
    assert [o["answer"] for o in out[:2]] == ["a1", "a2"] and out[0]["pair_id"] != out[1]["pair_id"]
    assert isinstance(out[2], RowRejected) and out[2].reason == "unpaired_question"
    for bad, reason in (([], "missing_prompt"), (["q", 3], "wrong_type"), ({"q": "a"}, "wrong_type")):
        with pytest.raises(RowRejected) as err:
            apollo_qa_pairs(bad)
        assert err.value.reason == reason


def test_am_messages_strip_answer_tags_with_or_without_info():
    with_info = {"messages": [{"role": "user", "content": "Q", "info": {"source": "s", "reference_answer": "R"}},
                              {"role": "assistant", "content": "<think>t</think>\n<answer>A</answer>",
                               "info": {"think_content": "t", "answer_content": "A"}}]}
    without = {"conversations": [{"from": "human", "value": "Q", "info": {"category": "if"}},
                                 {"from": "assistant", "value": "<think>\nt\n</think>\n<answer>A</answer>"}],
               "system": "distillation prompt, not used in training"}
    (a,), (b,) = am_messages(with_info), am_messages(without)
    assert a["messages"] == b["messages"] == [{"role": "user", "content": "Q"},
                                              {"role": "assistant", "content": "<think>\nt\n</think>\n\nA"}]
    assert (a["source"], a["reference_answer"], b["category"]) == ("s", "R", "if")


@pytest.mark.parametrize("name, answer, options, gold", [
    ("medmcqa", "CML. Explanation: Ans is 'b'", "Answer Choices:\nA. Leukemoid\nB. CML", "B"),
    ("pubmedqa_artificial", "The final decision is: maybe. Unclear.", "Answer Choices:\nA. Yes\nB. No", "maybe"),
    ("MedXpertQA", "(B) Weber", "Answer Choices:\nA. Lateral\nB. Weber", "B"),
    ("huatuo", "Needle decompression.", "", "Needle decompression."),
])
def test_medreason_answers(name, answer, options, gold):
    (rec,) = medreason_record({"dataset_name": name, "id_in_dataset": 1, "question": "q", "answer": answer,
                               "options": options})
    assert rec["answer"] == gold and rec["answer_text"] == answer


def test_liveqa_question_falls_back_to_the_nlm_summary():
    (rec,) = liveqa_trec2017({"QUESTION_ID": "TQ9", "NIST_PARAPHRASE": " ", "NLM_SUMMARY": "Summary?",
                              "ORIGINAL_QUESTION_MESSAGE": "orig", "REFERENCE_ANSWERS": [{"ANSWER": "ans"}]})
    assert (rec["question"], rec["answer"], rec["original_question"]) == ("Summary?", "ans", "orig")


def test_field_coverage_counts_the_rows_own_response():
    dialogue = {"id": "1", "prompt": "q2", "gold_answer": "a2", "options": None, "meta": None,
                "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                             {"role": "user", "content": "q2"}]}
    trace = {"id": "2", "prompt": "q", "gold_answer": None, "options": [("A", "x")], "meta": '{"context": "c"}',
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\na"}]}
    cut = dict(trace, id="3", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nr"}])
    assert fields_present(dialogue) == {"reasoning": False, "response": False, "options": False, "gold": True,
                                        "context": False}
    assert fields_present(trace) == {"reasoning": True, "response": True, "options": True, "gold": False,
                                     "context": True}
    assert fields_present(cut)["response"] is False
    cov = FieldCoverage()
    for row in (dialogue, trace, cut):
        cov.add(row)
    assert cov.shares()["reasoning"] == round(2 / 3, 4)
    assert cov.shortfalls({"reasoning": 0.9, "gold": 0.3}) == [("reasoning", round(2 / 3, 4), 0.9)]
    assert cov.missing_examples["reasoning"][0][0] == "1"
