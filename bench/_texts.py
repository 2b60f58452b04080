"""Real text for the cleaning benchmarks, from ../shared/data (bundled sample as fallback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
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
