"""MinHash signatures: iimed_assets.core.dedup (numba kernels over a batch) vs datasketch 2.0 at its documented
fast path, `MinHash.bulk` (one permutation set shared by every document), on the same texts (~300-word real
medical text), the same shingles (word 4-grams of lowercased \\w+ tokens) and the same num_perm. Both timings
include shingling. Each side runs `--repeats` times, alternating, and its best run counts; our one-off numba
compile (or cache load) is timed apart.

Final line: docs=... num_perm=... ours_docs_per_s=... datasketch_bulk_docs_per_s=... ratio=... compile_s=..."""

from __future__ import annotations

import argparse
import time

from _texts import words_300

from iimed_assets.core import dedup


def datasketch_bulk(texts: list[str], num_perm: int) -> list:
    from datasketch import MinHash

    shingles = []
    for text in texts:
        w = dedup.tokens(text)
        shingles.append([" ".join(w[i:i + 4]).encode() for i in range(max(len(w) - 3, 1))])
    return MinHash.bulk(shingles, num_perm=num_perm)


def ours(texts: list[str], num_perm: int, batch: int = 2000) -> None:
    mh = dedup.MinHasher(num_perm)
    for start in range(0, len(texts), batch):
        mh.signatures_of(texts[start:start + batch])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    texts = words_300(args.docs)

    t = time.perf_counter()
    ours(texts[:20], args.num_perm)  # numba: compile, or load the on-disk cache
    compile_s = time.perf_counter() - t
    best_ours = best_base = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        datasketch_bulk(texts, args.num_perm)
        best_base = min(best_base, time.perf_counter() - t)
        t = time.perf_counter()
        ours(texts, args.num_perm)
        best_ours = min(best_ours, time.perf_counter() - t)
    print(f"docs={len(texts)} num_perm={args.num_perm} ours_docs_per_s={len(texts) / best_ours:.0f} "
          f"datasketch_bulk_docs_per_s={len(texts) / best_base:.0f} ratio={best_base / best_ours:.2f} "
          f"compile_s={compile_s:.2f}")


if __name__ == "__main__":
    main()
