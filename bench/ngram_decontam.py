"""Step 1 of decontamination: NgramIndex (vectorised 8-gram hashes, NFKC/casefold/punctuation normalisation,
common n-grams left out, >= 3 shared with one item) against an open-r1-style baseline (scripts/decontaminate.py:
lowercase + whitespace-collapsed words, a dict of 8-gram strings, any shared 8-gram flags), on the same prompts
and eval sets. Also the false-positive rate of each on clean real prompts and the recall on the 662 real R1 traces
(model outputs on eval questions).
Final line: prompts=... ours_prompts_per_s=... openr1_prompts_per_s=... ratio=... ours_fpr=... openr1_fpr=...
ours_trace_recall=... openr1_trace_recall=..."""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from _texts import SHARED, clean_prompts, eval_texts

from iimed_assets.core import decontam


def _openr1_normalize(text: str) -> str:
    return " ".join(text.lower().strip().split())


def _openr1_ngrams(text: str, n: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


class OpenR1:
    def __init__(self, docs: list[str], n: int = 8):
        self.n = n
        self.lookup: dict[str, set[int]] = defaultdict(set)
        for i, d in enumerate(docs):
            for g in _openr1_ngrams(_openr1_normalize(d), n):
                self.lookup[g].add(i)

    def match(self, texts: list[str]) -> list[bool]:
        return [any(g in self.lookup for g in set(_openr1_ngrams(_openr1_normalize(t), self.n))) for t in texts]


def trace_prompts() -> list[str]:
    from iimed_assets.core.normalize import normalize_record
    from iimed_assets.sources.registry import _R1_TRACE

    out = []
    for f in sorted((SHARED / "r1_medical_traces").glob("*.jsonl")):
        for line in open(f):
            out.append(normalize_record(json.loads(line), _R1_TRACE, source="r1", section="r1_traces")["prompt"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200_000)
    args = ap.parse_args()
    items = [decontam.EvalItem(s, i, texts) for s, i, texts in eval_texts()]
    clean = clean_prompts()
    traces = trace_prompts()
    pool = clean + traces
    prompts = [pool[i % len(pool)] for i in range(args.prompts)]

    t = time.perf_counter()
    ours = decontam.NgramIndex(items)
    build_ours = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(0, len(prompts), 5000):
        ours.match_batch([decontam.strip_boilerplate(p) for p in prompts[s:s + 5000]])
    ours_s = time.perf_counter() - t

    t = time.perf_counter()
    base = OpenR1([x for it in items for x in it.texts])
    build_base = time.perf_counter() - t
    t = time.perf_counter()
    base.match(prompts)
    base_s = time.perf_counter() - t

    ours_fp = sum(h is not None for h in ours.match_batch([decontam.strip_boilerplate(p) for p in clean])) / len(clean)
    base_fp = sum(base.match(clean)) / len(clean)
    ours_rec = sum(h is not None for h in ours.match_batch(traces)) / len(traces)
    base_rec = sum(base.match(traces)) / len(traces)
    print(f"prompts={len(prompts)} eval_items={len(items)} clean_prompts={len(clean)} traces={len(traces)} "
          f"ours_build_s={build_ours:.1f} openr1_build_s={build_base:.1f} "
          f"ours_prompts_per_s={len(prompts) / ours_s:.0f} openr1_prompts_per_s={len(prompts) / base_s:.0f} "
          f"ratio={base_s / ours_s:.2f} ours_fpr={ours_fp:.4f} openr1_fpr={base_fp:.4f} "
          f"ours_trace_recall={ours_rec:.4f} openr1_trace_recall={base_rec:.4f}")


if __name__ == "__main__":
    main()
