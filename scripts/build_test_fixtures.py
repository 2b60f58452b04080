"""Rebuild iimed_assets_tests/fixtures/cleaning/ from ../shared/data: the real rows the cleaning tests need beyond the
bundled sample, so that the test suite runs in a clone with no ../shared beside it.

Every fixture row is a row of the origin file with only the fields the tests read (values unchanged); each folder
gets a SOURCE.md naming the origin (copied from ../shared/data/<folder>/SOURCE.md) and what was kept.
Run: python scripts/build_test_fixtures.py [SHARED_DATA]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "iimed_assets_tests" / "fixtures" / "cleaning"
SAMPLE = ROOT / "iimed_assets" / "sources" / "sample"

# MMLU subjects the cleaning tests count as medical (not clean prompts for the false-positive rate).
MEDICAL_MMLU = {"anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine", "high_school_biology", "nutrition", "virology", "human_aging"}
R1_FIELDS = ("realidx", "question", "options", "answer_idx", "answer", "predicted_answer", "subject")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, 9, mtime=0))  # mtime 0: the same rows give the same bytes
    else:
        path.write_bytes(data)


def _source(folder: Path, shared_folder: Path, kept: str) -> None:
    origin = (shared_folder / "SOURCE.md").read_text(encoding="utf-8")
    (folder / "SOURCE.md").write_text(f"# Test fixture: {folder.name}\n\n{kept}\n\nBuilt by "
                                      "`scripts/build_test_fixtures.py` from `../shared/data/"
                                      f"{shared_folder.name}/`, whose SOURCE.md follows.\n\n---\n\n{origin}",
                                      encoding="utf-8")


def main(shared: Path) -> None:
    # 1. The real R1 traces the bundled sample leaves out (it keeps a prefix of some files): question fields only.
    out, n = [], 0
    for f in sorted((shared / "r1_medical_traces").glob("*.jsonl")):
        bundled = SAMPLE / "r1_medical_traces" / f.name
        skip = sum(1 for line in open(bundled) if line.strip()) if bundled.exists() else 0
        for row in _rows(f)[skip:]:
            out.append({"file": f.name, **{k: row[k] for k in R1_FIELDS if k in row}})
        n += skip
    _write(FIXTURES / "r1_medical_traces" / "questions_not_bundled.jsonl", out)
    _source(FIXTURES / "r1_medical_traces", shared / "r1_medical_traces",
            f"`questions_not_bundled.jsonl`: the {len(out)} traces of the origin files that the bundled sample "
            f"(`iimed_assets/sources/sample/r1_medical_traces/`, {n} rows) does not hold, with the question fields "
            f"only ({', '.join(R1_FIELDS)}; `file` names the origin file). `completion`, `token_usage`, "
            "`time_elapsed`, `meta_info` and `metamap_phrases` were left out: the tests read the prompt.")

    # 2. The one Self-BioRAG MedMCQA train row that copies a MedMCQA dev question (row 853, 0-based).
    row = _rows(shared / "selfbiorag" / "medmc_qa_train_gpt4.jsonl")[853]
    _write(FIXTURES / "selfbiorag" / "medmc_qa_train_gpt4_row853.jsonl", [row])
    _source(FIXTURES / "selfbiorag", shared / "selfbiorag",
            "`medmc_qa_train_gpt4_row853.jsonl`: line 854 of `medmc_qa_train_gpt4.jsonl`, verbatim fields: a real "
            "train/eval overlap (its question is identical to a MedMCQA dev question).")

    # 3. Clean real prompts for the n-gram false-positive rate.
    mmlu = [{k: r[k] for k in ("subject", "question", "A", "B", "C", "D")}
            for name in ("test_other.jsonl", "test_stem.jsonl") for r in _rows(shared / "mmlu_all" / name)
            if r["subject"] not in MEDICAL_MMLU]
    _write(FIXTURES / "mmlu_all" / "test_other_stem_nonmedical.jsonl.gz", mmlu)
    _source(FIXTURES / "mmlu_all", shared / "mmlu_all",
            f"`test_other_stem_nonmedical.jsonl.gz`: the {len(mmlu)} rows of `test_other.jsonl` and `test_stem.jsonl` "
            f"whose subject is not one of {sorted(MEDICAL_MMLU)}, in file order; fields subject, question, A-D.")
    gsm = [{"question": r["question"]} for r in _rows(shared / "gsm8k" / "test.jsonl")]
    _write(FIXTURES / "gsm8k" / "test_questions.jsonl.gz", gsm)
    _source(FIXTURES / "gsm8k", shared / "gsm8k",
            f"`test_questions.jsonl.gz`: the `question` of all {len(gsm)} rows of `test.jsonl`, in file order.")
    chat = [{"input": r["input"]} for r in _rows(shared / "chatdoctor" / "chatdoctor5k.jsonl")]
    _write(FIXTURES / "chatdoctor" / "chatdoctor5k_inputs.jsonl.gz", chat)
    _source(FIXTURES / "chatdoctor", shared / "chatdoctor",
            f"`chatdoctor5k_inputs.jsonl.gz`: the `input` (patient message) of all {len(chat)} rows of "
            "`chatdoctor5k.jsonl`, in file order.")
    print(f"fixtures written to {FIXTURES}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data")
