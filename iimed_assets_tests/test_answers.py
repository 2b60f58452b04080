"""extract_choice: the public answer-extraction API (issue 5 groundwork), on patterns and on real traces."""

import json
import re
from pathlib import Path

import pytest

from iimed_assets.core.answers import extract_choice

OPTS = {"A": "Metformin", "B": "Insulin glargine", "C": "Wrist extension", "D": "Observation"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>long reasoning, maybe A</think>\n\nB", "B"),
        ("<think>x</think>\n\n**C**", "C"),
        ("<think>x</think>\nThe answer is \\boxed{D}.", "D"),
        ("<think>x</think>\n\\boxed{\\text{B}}", "B"),
        ("<think>x</think>\nAnswer: (B)", "B"),
        ("<think>x</think>\nSo the correct answer is **A**.", "A"),
        ("<think>x</think>\nThe findings fit. **Answer: C**", "C"),
        ("<think>x</think>\nThe deficit is **wrist extension (C)**.", "C"),
        ("<think>x</think>\n**D is correct** because nothing else fits.", "D"),
        ("<think>x</think>\nC. Wrist extension", "C"),
        ("<think>x</think>\nThe best choice is insulin glargine.", "B"),  # option text, exactly one
        ("<think>still thinking about A", None),  # cut off: never accepted
        ("<think>x</think>\n", None),
        ("<think>x</think>\nThe answer is A. On reflection the answer is B.", None),  # two commitments
        ("<think>x</think>\nIt could be metformin or insulin glargine.", None),  # two options named
        ("<think>x</think>\nThe answer is E.", None),  # not an option
        ("", None),
    ],
)
def test_extract_choice_patterns(response, expected):
    assert extract_choice(response, OPTS) == expected


def test_options_as_a_sequence():
    assert extract_choice("</think> The answer is (B).", ["x", "y", "z"]) == "B"
    assert extract_choice("</think> The answer is (D).", ["x", "y", "z"]) is None


TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "r1_medical_traces"

# Real disagreements with the benchmark's predicted_answer, kept as regression cases (docs/answer_agreement.md):
# after </think> the model wrote a different letter than the one the benchmark took from its thinking.
READ_THE_THINKING = [
    ("DeepSeek-R1-medbullets-test_hard-zero_shot.jsonl", 187, "D"),
    ("DeepSeek-R1-medqa-test_hard-zero_shot.jsonl", 273, "D"),
    ("DeepSeek-R1-mmlu-test_hard-zero_shot.jsonl", 698, "C"),
    ("DeepSeek-R1-medxpertqa-r-test_hard-zero_shot.jsonl", "Text-29", "H"),
]


@pytest.mark.skipif(not TRACES.exists(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("file, realidx, expected", READ_THE_THINKING)
def test_real_traces_final_answer_is_after_think(file, realidx, expected):
    rows = [json.loads(line) for line in open(TRACES / file)]
    (row,) = [r for r in rows if r.get("realidx") == realidx]
    assert extract_choice(row["completion"], row["options"]) == expected != row["predicted_answer"]


@pytest.mark.skipif(not TRACES.exists(), reason="../shared/data is not beside this checkout")
def test_agreement_with_benchmark_where_it_is_right():
    total = agree = 0
    for f in sorted(TRACES.glob("*.jsonl")):
        for line in open(f):
            r = json.loads(line)
            got = extract_choice(r["completion"], r["options"])
            text = r["completion"]
            if got == r["predicted_answer"]:
                agree += 1
                total += 1
            elif "</think>" not in text:
                assert got is None  # cut-off traces have no answer
            elif re.fullmatch(r"\s*\**\(?[A-Z]\)?\**\s*", text.rsplit("</think>", 1)[1]):
                assert got == text.rsplit("</think>", 1)[1].strip(" *()\n")  # the benchmark read the thinking
            else:
                total += 1  # a real disagreement counts against us
    assert total >= 580 and agree / total >= 0.99
