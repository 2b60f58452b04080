"""MinHash signatures: iimed_assets.core.dedup (numpy, batch) vs datasketch 2.0 `MinHash.update_batch`, same
texts (~300-word real medical text), same shingles (word 4-grams of lowercased \\w+ tokens), same num_perm.
Both timings include shingling. Final line: ours_docs_per_s=... datasketch_docs_per_s=... ratio=..."""

from __future__ import annotations

import argparse
import time

from _texts import words_300

from iimed_assets.core import dedup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args()
    texts = words_300(args.docs)

    from datasketch import MinHash

    t = time.perf_counter()
    for text in texts:
        w = dedup.tokens(text)
        shingles = {" ".join(w[i:i + 4]).encode() for i in range(max(len(w) - 3, 1))}
        m = MinHash(num_perm=args.num_perm)
        m.update_batch(list(shingles))
    base = time.perf_counter() - t

    mh = dedup.MinHasher(args.num_perm)
    t = time.perf_counter()
    for start in range(0, len(texts), 2000):
        mh.signatures_of(texts[start:start + 2000])
    ours = time.perf_counter() - t
    print(f"docs={len(texts)} num_perm={args.num_perm} ours_docs_per_s={len(texts) / ours:.0f} "
          f"datasketch_docs_per_s={len(texts) / base:.0f} ratio={base / ours:.2f}")


if __name__ == "__main__":
    main()
