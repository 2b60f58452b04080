"""Fuzzy step per prompt source: FuzzyIndex (one call per source's 500 random prompts, as the asset batches) vs
brute-force rapidfuzz cdist on the same prompts right after, flags compared.
Final line: chatdoctor=... gsm8k=... mmlu_other=... mmlu_humanities=... medquad=... (speed-up per source)
identical=..."""

import random
import time

import numpy as np
from _texts import _jsonl, eval_texts
from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from iimed_assets.core import decontam

medical = {"anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
           "professional_medicine", "high_school_biology", "nutrition", "virology", "human_aging"}


def mm(name):
    return [r["question"] + "\n" + "\n".join(r[c] for c in "ABCD")
            for r in _jsonl(f"mmlu_all/{name}") if r.get("subject") not in medical]


sources = {"chatdoctor": [r["input"] for r in _jsonl("chatdoctor/chatdoctor5k.jsonl")],
           "gsm8k": [r["question"] for r in _jsonl("gsm8k/test.jsonl")],
           "mmlu_other": mm("test_other.jsonl"), "mmlu_humanities": mm("test_humanities.jsonl"),
           "medquad": [r.get("question", "") for r in _jsonl("medquad/medquad_first200_per_source.jsonl")]}
evals = [t for _, _, texts in eval_texts() for t in texts]
pe = [default_process(e) for e in evals]
index = decontam.FuzzyIndex(evals, 80.0)
index.match_batch(["warm up"])
rng = random.Random(0)
ratios, same = {}, True
for name, ps in sources.items():
    ps = rng.sample([p for p in ps if p and p.strip()], min(500, len(ps)))
    t = time.perf_counter(); ours = [h is not None for h in index.match_batch(ps)]; to = time.perf_counter() - t
    t = time.perf_counter(); brute = []
    for k in range(0, len(ps), 100):
        m = process.cdist([default_process(x) for x in ps[k:k + 100]], pe, scorer=fuzz.ratio, processor=None,
                          score_cutoff=80, dtype=np.float32)
        brute += list((m >= 80).any(axis=1))
    tb = time.perf_counter() - t
    ratios[name], same = tb / to, same and ours == brute
    print(f"{name}: {len(ps)} prompts, ours {to / len(ps) * 1e3:.1f} ms/prompt, brute {tb / len(ps) * 1e3:.1f} "
          f"ms/prompt, ratio {tb / to:.1f}x, identical={ours == brute}", flush=True)
print(" ".join(f"{k}={v:.1f}" for k, v in ratios.items()) + f" identical={same}")
