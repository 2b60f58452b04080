"""Near-duplicate detection for responses: word 4-gram shingles, MinHash + LSH banding for candidates, exact
Jaccard for the decision.

    near_duplicate_mask(texts, ngram=4, threshold=0.7) -> [False, True, ...]   # True = drop

A text is dropped when its exact Jaccard similarity (over sets of word n-gram shingles of lowercased `\\w+`
tokens) with an *earlier kept* text is >= threshold. LSH only proposes candidate pairs; every candidate is
verified with the exact Jaccard of the two shingle sets, so nothing below the threshold is ever dropped. The
bands sit well below the threshold (32 bands × 4 rows: a pair at Jaccard 0.7 becomes a candidate with probability
1 - (1 - 0.7^4)^32 = 0.99985), so almost nothing above it is missed either.

Signatures are computed with numpy over a whole batch of documents at once (no Python loop per shingle): each
shingle is hashed once (64 bit), then all permutations are one multiply-shift over a (shingles × permutations)
matrix, reduced per document with `np.minimum.reduceat`.
"""

from __future__ import annotations

import re
import zlib
from itertools import repeat
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xBF58476D1CE4E5B9)
_P3 = np.uint64(0x94D049BB133111EB)


# ASCII fast path: every character that is not [A-Za-z0-9_] becomes a space (str.translate runs in C); for ASCII
# text this splits exactly where `\w+` does.
_ASCII_NONWORD = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}


def tokens(text: str) -> list[str]:
    """Lowercased `\w+` runs."""
    text = (text or "").lower()
    if text.isascii():
        return text.translate(_ASCII_NONWORD).split()
    return _WORD.findall(text)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _P2
    x = x ^ (x >> np.uint64(27))
    x = x * _P3
    return x ^ (x >> np.uint64(31))


class _WordHasher:
    """Stable 64-bit word hashes (crc32 twice, with different seeds). Words get small integer ids from a dict
    (corpora repeat words a lot; lookups run through `map`, in C), and the hashes live in a numpy table indexed
    by id. The empty string (shingle padding) is id 0 with hash 0. Past `max_vocab` words the table is reset."""

    def __init__(self, max_vocab: int = 2_000_000) -> None:
        self.max_vocab = max_vocab
        self._reset()

    def _reset(self) -> None:
        self.ids: dict[str, int] = {"": 0}
        self.table = np.zeros(1024, dtype=np.uint64)

    @staticmethod
    def _hash(w: str) -> int:
        b = w.encode("utf-8", "surrogatepass")
        return (zlib.crc32(b) << 32) | zlib.crc32(b, 0x5BD1E995)

    def __call__(self, words: list[str]) -> np.ndarray:
        idx = np.fromiter(map(self.ids.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        missing = np.flatnonzero(idx < 0)
        if len(missing):
            new = list(dict.fromkeys(words[i] for i in missing.tolist()))
            if len(self.ids) + len(new) > self.max_vocab:
                if len(new) + 1 > self.max_vocab:  # one batch with more distinct words than the cache holds
                    return np.array([self._hash(w) if w else 0 for w in words], dtype=np.uint64)
                self._reset()
                return self(words)
            start = len(self.ids)
            need = start + len(new)
            if need > len(self.table):
                grown = np.zeros(max(need, 2 * len(self.table)), dtype=np.uint64)
                grown[: len(self.table)] = self.table
                self.table = grown
            self.table[start:need] = np.array([self._hash(w) for w in new], dtype=np.uint64)
            self.ids.update(zip(new, range(start, need)))
            idx[missing] = np.fromiter(map(self.ids.__getitem__, (words[i] for i in missing.tolist())),
                                       dtype=np.int64, count=len(missing))
        return self.table[idx]


def shingle_batch(texts: Sequence[str], ngram: int = 4, hasher: _WordHasher | None = None,
                  tokenize: Callable[[str], list[str]] = tokens) -> tuple[np.ndarray, np.ndarray]:
    """All word n-gram hashes of a batch of texts, vectorised: (hashes uint64, shingles per text). A text shorter
    than n words is one shingle (its words, zero-padded); a text with no word has none. Not deduplicated: MinHash
    does not need it."""
    hasher = hasher or _WordHasher()
    flat: list[str] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    pad = [""] * (ngram - 1)
    for i, t in enumerate(texts):
        words = tokenize(t)
        lengths[i] = len(words)
        flat.extend(words)
        flat.extend(pad)
    w = hasher(flat)  # padding ("") hashes to 0
    counts = np.where(lengths == 0, 0, np.maximum(lengths - ngram + 1, 1))
    starts = np.concatenate([[0], np.cumsum(lengths + ngram - 1)[:-1]]).astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.uint64), counts
    pos = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(total)
    h = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):  # a loop over the n positions of a shingle, vectorised over all shingles
            h = _mix(h * _P1 + w[pos + k])
    return h, counts


def split_sets(hashes: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """`shingle_batch` output cut into each text's shingle set (sorted unique hashes)."""
    ends = np.cumsum(counts).tolist()
    return [np.unique(hashes[e - c:e]) for e, c in zip(ends, counts.tolist())]


def shingle_sets(texts: Sequence[str], ngram: int = 4, hasher: _WordHasher | None = None) -> list[np.ndarray]:
    """Each text's shingle set, from one vectorised `shingle_batch`."""
    return split_sets(*shingle_batch(texts, ngram, hasher))


def shingle_hashes(text: str, ngram: int = 4, hasher: _WordHasher | None = None) -> np.ndarray:
    """The sorted unique 64-bit hashes of one text's word n-grams: its shingle set."""
    return shingle_sets([text], ngram, hasher)[0]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays (as `shingle_hashes` returns)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


@dataclass
class MinHasher:
    """`num_perm` hash functions over shingles: each 64-bit shingle hash is folded to 32 bits, then permuted by
    num_perm random affine bijections x -> a·x + b (mod 2^32, a odd). The inputs are already well-mixed hashes,
    so the affine maps behave as min-wise permutations (tested against exact Jaccard), and 32-bit lanes keep the
    (shingles × permutations) block small enough to stay in cache."""

    num_perm: int = 128
    seed: int = 1
    block_cells: int = 64 * 1024  # shingles × permutations per numpy block (256 KB of uint32: stays in L2)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.a = rng.integers(0, 2**32, self.num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 2**32, self.num_perm, dtype=np.uint64).astype(np.uint32)
        self.hasher = _WordHasher()  # kept across calls: the word-hash cache warms up

    def signatures(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(documents × num_perm) uint32 signatures from `shingle_batch` output; no shingle -> all 0xFFFFFFFF."""
        n_docs = len(counts)
        out = np.full((n_docs, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        x = (hashes ^ (hashes >> np.uint64(32))).astype(np.uint32)
        ends = np.cumsum(counts)
        starts = ends - counts
        block_rows = max(1, self.block_cells // self.num_perm)
        buf = np.empty((block_rows, self.num_perm), dtype=np.uint32)
        d = 0
        while d < n_docs:
            e, lo = d, int(starts[d])
            while e < n_docs and (e == d or int(ends[e]) - lo <= block_rows):
                e += 1
            docs = np.arange(d, e)[counts[d:e] > 0]
            if len(docs):
                block = x[lo:int(ends[e - 1])]
                vals = buf[: len(block)] if len(block) <= block_rows else np.empty((len(block), self.num_perm), np.uint32)
                np.multiply(block[:, None], self.a[None, :], out=vals)
                vals += self.b
                out[docs] = np.minimum.reduceat(vals, starts[docs] - lo, axis=0)
            d = e
        return out

    def signatures_of(self, texts: Sequence[str], ngram: int = 4, hasher: _WordHasher | None = None) -> np.ndarray:
        return self.signatures(*shingle_batch(texts, ngram, hasher or self.hasher))


def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands × rows = num_perm whose S-curve midpoint (1/b)^(1/r) lies well below the
    threshold: the largest r whose miss probability at the threshold is < 1e-3."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        if num_perm % r:
            continue
        b = num_perm // r
        miss = (1 - threshold ** r) ** b
        if miss < 1e-3:
            best = (b, r)
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents × bands) uint64 bucket keys; the band index is mixed in, so keys of different bands differ."""
    n = signatures.shape[0]
    s = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.arange(bands, dtype=np.uint64)[None, :].repeat(n, axis=0)
    with np.errstate(over="ignore"):
        for k in range(rows):
            h = _mix(h * _P1 + s[:, :, k])
    return h


@dataclass
class DedupResult:
    drop: list[bool]
    kept_match: dict[int, tuple[int, float]]  # dropped index -> (kept index it duplicates, exact Jaccard)
    candidate_pairs: int = 0


def greedy_verify(ords: Sequence[int], sets: Sequence[np.ndarray], keys: np.ndarray, threshold: float,
                  prior: Mapping[int, Sequence[int]] | None = None,
                  prior_set: Callable[[int], np.ndarray] | None = None,
                  ) -> tuple[list[bool], dict[int, tuple[int, float]], int, int]:
    """The greedy rule over one chunk of rows: rows `ords` (ascending, each with shingles; `sets[k]` its shingle set,
    `keys[k]` its LSH bucket keys) are taken in order, and each is compared, smallest row first, with the earlier
    *kept* rows it shares a bucket with: first `prior[ord]` (kept rows of earlier chunks, ascending, their sets from
    `prior_set`), then the kept rows of this chunk. The first with exact Jaccard >= threshold drops it.
    Only kept rows enter the buckets, so a cluster of near-copies of one text costs one pair per copy, not c²/2.
    Returns (kept flag per row, dropped ord -> (kept ord, Jaccard), candidate pairs, pairs verified)."""
    buckets: dict[int, list[int]] = {}
    local: dict[int, np.ndarray] = {}
    kept: list[bool] = []
    matches: dict[int, tuple[int, float]] = {}
    pairs = verified = 0
    for o, s, row_keys in zip(ords, sets, keys.tolist()):
        earlier = prior.get(o, ()) if prior else ()
        here = sorted({j for k in row_keys for j in buckets.get(k, ())})
        pairs += len(earlier) + len(here)
        match = None
        for j in earlier:
            verified += 1
            sim = jaccard(s, prior_set(j))
            if sim >= threshold:
                match = (j, sim)
                break
        if match is None:
            for j in here:
                verified += 1
                sim = jaccard(s, local[j])
                if sim >= threshold:
                    match = (j, sim)
                    break
        kept.append(match is None)
        if match is None:
            local[o] = s
            for k in row_keys:
                buckets.setdefault(k, []).append(o)
        else:
            matches[o] = match
    return kept, matches, pairs, verified


def near_duplicates(texts: Iterable[str], *, ngram: int = 4, threshold: float = 0.7, num_perm: int = 128,
                    seed: int = 1) -> DedupResult:
    """In-memory greedy dedup in input order (for notebooks and tests; the asset runs the same `greedy_verify`
    chunk by chunk with the kept rows' buckets in DuckDB)."""
    hashes, counts = shingle_batch(list(texts), ngram)
    sets = split_sets(hashes, counts)
    bands, rows = lsh_params(num_perm, threshold)
    keys = band_keys(MinHasher(num_perm, seed).signatures(hashes, counts), bands, rows)
    has = np.flatnonzero(counts > 0)
    _, matches, pairs, _ = greedy_verify(has.tolist(), [sets[i] for i in has.tolist()], keys[has], threshold)
    drop = [i in matches for i in range(len(sets))]
    return DedupResult(drop, matches, pairs)


def near_duplicate_mask(texts: Sequence[str], *, ngram: int = 4, threshold: float = 0.7) -> list[bool]:
    """True where a text is a near-duplicate (exact Jaccard >= threshold over word n-gram shingles) of an
    earlier kept text."""
    return near_duplicates(texts, ngram=ngram, threshold=threshold).drop


def near_duplicate_mask_exact(texts: Sequence[str], *, ngram: int = 4, threshold: float = 0.7) -> list[bool]:
    """The same rule by brute force over all earlier kept texts (O(n²)): the reference for tests and benchmarks."""
    hasher = _WordHasher()
    sets = [shingle_hashes(t, ngram, hasher) for t in texts]
    kept: list[int] = []
    drop = [False] * len(sets)
    for i, s in enumerate(sets):
        if len(s) and any(jaccard(s, sets[j]) >= threshold for j in kept):
            drop[i] = True
        elif len(s):
            kept.append(i)
    return drop
