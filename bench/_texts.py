"""Real text for the cleaning benchmarks, from ../shared/data or $IIMED_SHARED_DATA (bundled sample as fallback)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("IIMED_SHARED_DATA") or ROOT.parent / "shared" / "data")
SAMPLE = ROOT / "iimed_assets" / "sources" / "sample"


def _jsonl(rel: str) -> list[dict]:
    for base in (SHARED, SAMPLE):
        p = base / rel
        if p.exists():
            return [json.loads(line) for line in open(p) if line.strip()]
    return []


def responses() -> list[str]:
    """Real long-ish answers: ChatDoctor outputs and HuatuoGPT-o1 reasoning."""
    out = [r["output"] for r in _jsonl("chatdoctor/chatdoctor5k.jsonl")]
    out += [r["Complex_CoT"] + "\n" + r["Response"] for r in _jsonl("medical_o1_demo/demo_data.jsonl")]
    return [t for t in out if t.strip()]


def words_300(n: int) -> list[str]:
    """n texts of ~300 words made of real sentences (consecutive responses joined and cut)."""
    base = responses()
    words = " ".join(base).split()
    out, i = [], 0
    for k in range(n):
        if i + 300 > len(words):
            i = (k * 37) % 1000
        out.append(" ".join(words[i:i + 300]))
        i += 300
    return out


def clean_prompts() -> list[str]:
    """Real prompts that are not eval questions: ChatDoctor inputs, GSM8K, non-medical MMLU, MedQuAD questions."""
    out = [r["input"] for r in _jsonl("chatdoctor/chatdoctor5k.jsonl")]
    out += [r["question"] for r in _jsonl("gsm8k/test.jsonl")]
    medical = {"anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
               "professional_medicine", "high_school_biology", "nutrition", "virology", "human_aging"}
    for name in ("test_other.jsonl", "test_stem.jsonl", "test_humanities.jsonl", "test_social_sciences.jsonl"):
        out += [r["question"] + "\n" + "\n".join(r[c] for c in "ABCD")
                for r in _jsonl(f"mmlu_all/{name}") if r.get("subject") not in medical]
    out += [r.get("question", "") for r in _jsonl("medquad/medquad_first200_per_source.jsonl")]
    return [t for t in out if t and t.strip()]


def eval_texts() -> list[tuple[str, str, tuple[str, ...]]]:
    """(eval set, item id, (bare question, question + options)) for the complete bundled eval sets, read through
    the registry exactly as eval_items reads them."""
    from iimed_assets.core.normalize import RowRejected, normalize_record
    from iimed_assets.sources.loaders import iter_sample
    from iimed_assets.sources.registry import sources_in

    out = []
    for spec in sources_in("eval"):
        try:
            items = list(iter_sample(spec))
        except Exception:  # noqa: BLE001 - no offline copy (GPQA)
            continue
        for item in items:
            if item.error:
                continue
            try:
                row = normalize_record(item.record, item.fields, source=spec.name, section="eval",
                                       fallback_native_id=item.fallback_id, native_prefix=item.native_prefix)
            except RowRejected:
                continue
            meta = json.loads(row["meta"]) if row["meta"] else {}
            bare = meta.get("question") or row["prompt"]
            ctx = meta.get("context")
            if ctx and bare.startswith(ctx):
                bare = bare[len(ctx):].strip()
            out.append((spec.name, row["id"], tuple(dict.fromkeys([bare, row["prompt"]]))))
    return out


# ---- labelled prompts for the section-3 domain filter -----------------------------------------------------

def _mmlu_domain(subject: str) -> str:
    from iimed_assets.core.domains import MMLU_MEDICAL_BIOLOGY

    if subject in MMLU_MEDICAL_BIOLOGY:
        return "Biology" if "biology" in subject or subject == "medical_genetics" else "Medical"
    rules = [("math|algebra|statistics", "Mathematics"), ("computer|machine_learning|security", "Computer Science"),
             ("physics|astronomy", "Physics"), ("chemistry", "Chemistry"), ("law|jurisprudence", "Law"),
             ("econom|accounting|marketing|management|business", "Economics"), ("psychology", "Psychology"),
             ("history|prehistory", "History"), ("philosophy|moral|logic|ethics|religions", "Philosophy"),
             ("engineering", "Engineering")]
    import re

    for pattern, domain in rules:
        if re.search(pattern, subject):
            return domain
    return "Other"


def labelled_domain_prompts(per_set: int = 150, per_mmlu_subject: int = 20) -> list[tuple[str, str, str]]:
    """(set, true domain, prompt) from ../shared/data: all 57 MMLU subjects (medical/biology subjects per
    core.domains.MMLU_MEDICAL_BIOLOGY), GSM8K, MBPP, HumanEval, MATH-500, ARC, and medical sets."""
    out: list[tuple[str, str, str]] = []
    by_subject: dict[str, int] = {}
    for part in ("test_stem", "test_humanities", "test_social_sciences", "test_other"):
        for r in _jsonl(f"mmlu_all/{part}.jsonl"):
            if by_subject.get(r["subject"], 0) < per_mmlu_subject:
                by_subject[r["subject"]] = by_subject.get(r["subject"], 0) + 1
                out.append((f"mmlu:{r['subject']}", _mmlu_domain(r["subject"]), r["question"]))
    sets = [
        ("gsm8k", "Mathematics", "gsm8k/test.jsonl", lambda r: r["question"]),
        ("math500", "Mathematics", "math500/test.jsonl", lambda r: r["problem"]),
        ("mbpp", "Computer Science", "mbpp/mbpp.jsonl", lambda r: r["text"]),
        ("humaneval", "Computer Science", "humaneval/HumanEval.jsonl", lambda r: r["prompt"]),
        ("arc", "Other", "arc/ARC-Challenge-Test.jsonl", lambda r: r["question"]["stem"]),
        ("medqa", "Medical", "medqa/test_4options.jsonl", lambda r: r["question"]),
        ("medmcqa", "Medical", "medmcqa/dev.jsonl", lambda r: r["question"]),
        ("pubmedqa", "Medical", "pubmedqa/ori_pqal.jsonl", lambda r: r["QUESTION"]),
        ("medxpertqa", "Medical", "medxpertqa/text_reasoning_test.jsonl", lambda r: r["question"]),
        ("medquad", "Medical", "medquad/medquad_first200_per_source.jsonl", lambda r: r["question"]),
    ]
    for name, domain, rel, get in sets:
        rows = _jsonl(rel)
        step = max(1, len(rows) // per_set)
        out += [(name, domain, get(r)) for r in rows[::step][:per_set]]
    return [(s, d, p) for s, d, p in out if p and p.strip()]


def all_prompts() -> list[str]:
    """Every distinct real prompt the other helpers read (clean prompts, all labelled domain prompts, eval questions
    with their PubMedQA contexts): a pool with the length spread of real R1 prompts, for throughput benches."""
    out = clean_prompts() + [p for _, _, p in labelled_domain_prompts(10**9, 10**9)]
    out += [r["QUESTION"] + "\n" + " ".join(r.get("CONTEXTS") or []) for r in _jsonl("pubmedqa/ori_pqal.jsonl")]
    return list(dict.fromkeys(t for t in out if t and t.strip()))
