"""Dedup decisions of the LSH path (near_duplicate_mask) against exact Jaccard by brute force, on real responses
plus copies with known edits (k random word substitutions, k from 1 to 60). Precision and recall are over the
drop decisions; the LSH path verifies every candidate exactly, so precision is 1 by construction and recall
measures what LSH banding misses. Final line: rows=... exact_drops=... recall=... precision=... agreement=..."""

from __future__ import annotations

import argparse
import random
import time

from _texts import responses

from iimed_assets.core import dedup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=1500)
    ap.add_argument("--copies", type=int, default=1500)
    args = ap.parse_args()
    rng = random.Random(0)
    base = [t for t in responses() if len(t.split()) >= 20][: args.base]
    texts = list(base)
    for _ in range(args.copies):
        words = rng.choice(base).split()
        for _ in range(rng.randint(1, 60)):
            words[rng.randrange(len(words))] = rng.choice(["the", "patient", "xyz", "dose", "pain"])
        texts.append(" ".join(words))
    rng.shuffle(texts)
    t = time.perf_counter()
    exact = dedup.near_duplicate_mask_exact(texts)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    got = dedup.near_duplicates(texts)
    t_lsh = time.perf_counter() - t
    tp = sum(a and b for a, b in zip(got.drop, exact))
    fp = sum(a and not b for a, b in zip(got.drop, exact))
    fn = sum(b and not a for a, b in zip(got.drop, exact))
    agree = sum(a == b for a, b in zip(got.drop, exact)) / len(texts)
    print(f"rows={len(texts)} exact_drops={sum(exact)} lsh_drops={sum(got.drop)} candidate_pairs={got.candidate_pairs} "
          f"exact_s={t_exact:.1f} lsh_s={t_lsh:.1f} recall={tp / (tp + fn) if tp + fn else 1:.4f} "
          f"precision={tp / (tp + fp) if tp + fp else 1:.4f} agreement={agree:.4f}")


if __name__ == "__main__":
    main()
