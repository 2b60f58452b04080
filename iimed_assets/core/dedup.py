"""Near-duplicate detection for responses: word 4-gram shingles, MinHash + LSH banding for candidates, exact
Jaccard for the decision.

    near_duplicate_mask(texts, ngram=4, threshold=0.7) -> [False, True, ...]   # True = drop
    StreamingDedup(scratch_path, fetch_texts).process(order, texts) -> drops    # the same rule, chunk by chunk

A text is dropped when its exact Jaccard similarity (over sets of word n-gram shingles of lowercased `\\w+`
tokens) with an *earlier kept* text is >= threshold. LSH only proposes candidate pairs; every candidate is
verified with the exact Jaccard of the two shingle sets, so nothing below the threshold is ever dropped. The
bands sit well below the threshold (32 bands × 4 rows: a pair at Jaccard 0.7 becomes a candidate with probability
1 - (1 - 0.7^4)^32 = 0.99985), so almost nothing above it is missed either.

Hashing is the hot loop, so it runs in numba kernels over a whole batch of texts (`core.minhash_kernels`, loaded
on first use): ASCII texts are split, lowercased and their words hashed in one pass over their bytes; other texts
are split in Python (`tokens`) and hashed through a word-hash cache (`WordHasher`), with the same hashes. Each
shingle is hashed once (64 bit); the signature is, per permutation, the minimum of a·x + b mod 2^32 over the
text's shingles (x = the shingle hash folded to 32 bits), computed in one pass with the permutation loop
vectorised.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xBF58476D1CE4E5B9)
_P3 = np.uint64(0x94D049BB133111EB)


# Every character that is not [A-Za-z0-9_] becomes a space (str.translate runs in C); for ASCII text this splits
# exactly where `\w+` does.
_ASCII_NONWORD = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}


def tokens(text: str) -> list[str]:
    r"""Lowercased `\w+` runs."""
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


class WordHasher:
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


def _word_hashes(texts: Sequence[str], hasher: WordHasher | None,
                 tokenize: Callable[[str], list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Every text's word hashes laid end to end, and each text's word count. ASCII texts go through the numba
    kernel (lowercased `[A-Za-z0-9_]+` runs: what `tokens` and `decontam.normalized_words` give on ASCII), the
    others through `tokenize` and the word-hash cache; both hash a word the same way."""
    from iimed_assets.core import minhash_kernels as kernels

    texts = [t or "" for t in texts]
    is_ascii = [t.isascii() for t in texts]
    ascii_texts = [t for t, a in zip(texts, is_ascii) if a]
    words = np.empty(0, dtype=np.uint64)
    ascii_lengths = np.empty(0, dtype=np.int64)
    if ascii_texts:
        sizes = np.fromiter(map(len, ascii_texts), dtype=np.int64, count=len(ascii_texts))
        ends = np.cumsum(sizes + 1) - 1  # texts joined by "\n", a non-word byte
        buf = np.frombuffer("\n".join(ascii_texts).encode("ascii"), dtype=np.uint8)
        words, ascii_lengths = kernels.ascii_word_hashes(buf, ends - sizes, ends, kernels.CRC_TABLE)
        if len(ascii_texts) == len(texts):
            return words, ascii_lengths
    hasher = hasher or WordHasher()
    word_ends = np.cumsum(ascii_lengths).tolist()
    lengths = np.zeros(len(texts), dtype=np.int64)
    parts, k = [], 0
    for i, (t, a) in enumerate(zip(texts, is_ascii)):
        if a:
            lengths[i] = ascii_lengths[k]
            parts.append(words[word_ends[k] - lengths[i]:word_ends[k]])
            k += 1
        else:
            w = tokenize(t)
            parts.append(hasher(w) if w else np.empty(0, dtype=np.uint64))
            lengths[i] = len(w)
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)), lengths


def shingle_batch(texts: Sequence[str], ngram: int = 4, hasher: WordHasher | None = None,
                  tokenize: Callable[[str], list[str]] = tokens) -> tuple[np.ndarray, np.ndarray]:
    """All word n-gram hashes of a batch of texts: (hashes uint64, shingles per text). A text shorter than n words
    is one shingle (its words, zero-padded); a text with no word has none. Not deduplicated: MinHash does not need
    it. `tokenize` splits the non-ASCII texts (ASCII ones are split as lowercased `\\w+` by the kernel);
    `hasher` caches their word hashes across calls."""
    from iimed_assets.core import minhash_kernels as kernels

    words, lengths = _word_hashes(texts, hasher, tokenize)
    return kernels.ngram_hashes(words, lengths, ngram)


def split_sets(hashes: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """`shingle_batch` output cut into each text's shingle set (sorted unique hashes)."""
    ends = np.cumsum(counts).tolist()
    return [np.unique(hashes[e - c:e]) for e, c in zip(ends, counts.tolist())]


def shingle_sets(texts: Sequence[str], ngram: int = 4, hasher: WordHasher | None = None) -> list[np.ndarray]:
    """Each text's shingle set, from one vectorised `shingle_batch`."""
    return split_sets(*shingle_batch(texts, ngram, hasher))


def shingle_hashes(text: str, ngram: int = 4, hasher: WordHasher | None = None) -> np.ndarray:
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
    so the affine maps behave as min-wise permutations (tested against exact Jaccard)."""

    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.a = rng.integers(0, 2**32, self.num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 2**32, self.num_perm, dtype=np.uint64).astype(np.uint32)
        self.hasher = WordHasher()  # kept across calls: the word-hash cache warms up

    def signatures(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(documents × num_perm) uint32 signatures from `shingle_batch` output; no shingle -> all 0xFFFFFFFF."""
        from iimed_assets.core import minhash_kernels as kernels

        return kernels.min_signatures(hashes, np.asarray(counts, dtype=np.int64), self.a, self.b)

    def signatures_of(self, texts: Sequence[str], ngram: int = 4, hasher: WordHasher | None = None) -> np.ndarray:
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


def exact_key(shingle_set: np.ndarray) -> int:
    """A 64-bit key of a shingle set: equal sets (exact copies up to case and punctuation) share it."""
    return int.from_bytes(hashlib.blake2b(shingle_set.tobytes(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Drop:
    """A dropped row: its order, the earlier kept row it duplicates, and their exact Jaccard."""

    order: int
    kept_order: int
    jaccard: float


@dataclass
class DedupStats:
    rows: int = 0
    dropped: int = 0
    exact_copies: int = 0      # rows whose shingle set equals an earlier row's (resolved by key, not verified)
    candidate_pairs: int = 0   # (row, earlier kept row) pairs sharing an LSH bucket
    pairs_verified: int = 0    # ... whose exact Jaccard was computed before a match ended the row's search
    sets_reread: int = 0       # kept rows' shingle sets re-read through `fetch_texts` (LRU cache misses)
    jaccard_of_dropped: dict[str, int] = field(default_factory=dict)  # "0.85" -> drops in [0.85, 0.90)


class _SetCache:
    """Shingle sets of kept rows by order, least recently used dropped past `size`; misses are re-read through
    `fetch_texts(orders) -> [(order, text)]` and re-shingled in one batch."""

    def __init__(self, size: int, fetch_texts: Callable[[list[int]], Iterable[tuple[int, str]]], ngram: int,
                 hasher: WordHasher) -> None:
        self.size, self.fetch_texts, self.ngram, self.hasher = size, fetch_texts, ngram, hasher
        self.sets: OrderedDict[int, np.ndarray] = OrderedDict()
        self.misses = 0

    def put(self, o: int, s: np.ndarray) -> None:
        self.sets[o] = s
        self.sets.move_to_end(o)
        while len(self.sets) > self.size:
            self.sets.popitem(last=False)

    def ensure(self, ords: list[int]) -> dict[int, np.ndarray]:
        """The sets of `ords`, fetching the missing ones; returned as a dict so eviction cannot lose them."""
        out = {o: self.sets[o] for o in ords if o in self.sets}
        for o in out:
            self.sets.move_to_end(o)
        missing = [o for o in ords if o not in out]
        if missing:
            self.misses += len(missing)
            rows = list(self.fetch_texts(missing))
            for (o, _), shingles in zip(rows, shingle_sets([t for _, t in rows], self.ngram, self.hasher)):
                out[o] = shingles
                self.put(o, shingles)
        return out


class StreamingDedup:
    """The greedy near-duplicate rule over rows that arrive in ascending order, chunk by chunk, with memory that does
    not grow with the row count.

    Per chunk (`process(orders, texts)`): shingles and MinHash signatures (numba); exact copies (same shingle set)
    resolved by a key lookup; then each remaining row is verified by exact Jaccard against the earlier *kept* rows
    that share an LSH bucket with it (`greedy_verify`). State: the kept rows' bucket keys and the first row of each
    shingle set live in a scratch DuckDB file (`kept_bands`, `exact_reps`; it spills past `scratch_memory`), the
    kept rows' shingle sets in an LRU cache of `cached_sets` (misses re-read through `fetch_texts`), the word-hash
    cache is reset past `max_vocab` words. The earliest row of a group stays; an exact copy of a dropped row points
    at that row's own match."""

    def __init__(self, scratch_path: str | Path, fetch_texts: Callable[[list[int]], Iterable[tuple[int, str]]], *,
                 ngram: int = 4, threshold: float = 0.7, num_perm: int = 128, seed: int = 1,
                 cached_sets: int = 20_000, scratch_memory: str = "256MB", max_vocab: int = 500_000) -> None:
        import duckdb

        self.ngram, self.threshold, self.num_perm = ngram, threshold, num_perm
        self.bands, self.rows_per_band = lsh_params(num_perm, threshold)
        self.hasher = WordHasher(max_vocab)
        self.minhasher = MinHasher(num_perm, seed)
        self.cache = _SetCache(cached_sets, fetch_texts, ngram, self.hasher)
        self.stats = DedupStats()
        self.db = duckdb.connect(str(scratch_path), config={"memory_limit": scratch_memory})
        # exact_reps: the first row of each shingle set, with its own match if it was dropped.
        self.db.execute("CREATE TABLE exact_reps (key UBIGINT, ord BIGINT, kept_ord BIGINT, jaccard DOUBLE)")
        self.db.execute("CREATE TABLE kept_bands (bucket UBIGINT, ord BIGINT)")

    @property
    def parameters(self) -> dict:
        """The rule's parameters as the dataset card and the stage record report them."""
        return {"ngram": self.ngram, "threshold": self.threshold, "num_perm": self.num_perm, "bands": self.bands,
                "rows_per_band": self.rows_per_band,
                "p_candidate_at_threshold": round(1 - (1 - self.threshold ** self.rows_per_band) ** self.bands, 6)}

    def process(self, orders: Sequence[int], texts: Sequence[str]) -> list[Drop]:
        """One chunk (orders ascending, above every earlier chunk's): the rows it drops, in order."""
        import pyarrow as pa

        ords = list(orders)
        hashes, counts = shingle_batch(texts, self.ngram, self.hasher)
        sets = {o: x for o, x in zip(ords, split_sets(hashes, counts)) if len(x)}
        keys = {o: exact_key(x) for o, x in sets.items()}  # a row with no shingle is never a duplicate
        known = dict(self.db.execute(
            "SELECT key, [ord, kept_ord, jaccard] FROM exact_reps WHERE key IN (SELECT unnest(?::UBIGINT[]))",
            [sorted(set(keys.values()))]).fetchall())
        first: dict[int, int] = {}
        reps, followers = [], []
        for o, k in keys.items():
            if k in known or k in first:
                followers.append((o, k))
            else:
                first[k] = o
                reps.append(o)
        at = {o: i for i, o in enumerate(ords)}
        band = band_keys(self.minhasher.signatures(hashes, counts), self.bands, self.rows_per_band)[
            np.array([at[o] for o in reps], dtype=np.int64)]
        rep_ords = np.array(reps, dtype=np.int64)
        prior = self._prior_candidates(rep_ords, band)
        prior_sets = self.cache.ensure(sorted({i for c in prior.values() for i in c}))
        kept, matches, pairs, verified = greedy_verify(
            reps, [sets[o] for o in reps], band, self.threshold, prior, prior_sets.__getitem__)
        # Exact copies follow their rep: dropped with the rep as match, or with the rep's own match.
        rep_match = {k: (v[0], v[1], v[2]) for k, v in known.items()}
        for o in reps:
            m = matches.get(o)
            rep_match[keys[o]] = (o, m[0] if m else None, m[1] if m else None)
        for o, k in followers:
            rep, kept_ord, sim = rep_match[k]
            matches[o] = (rep, 1.0) if kept_ord is None else (kept_ord, sim)
        self.db.register("new_reps", pa.table({
            "key": pa.array([keys[o] for o in reps], pa.uint64()), "ord": rep_ords,
            "kept_ord": pa.array([matches[o][0] if o in matches else None for o in reps], pa.int64()),
            "jaccard": pa.array([matches[o][1] if o in matches else None for o in reps], pa.float64())}))
        self.db.execute("INSERT INTO exact_reps SELECT * FROM new_reps")
        keep = np.array(kept, dtype=bool)
        self.db.register("new_kept", pa.table({"bucket": band[keep].reshape(-1),
                                               "ord": np.repeat(rep_ords[keep], self.bands)}))
        self.db.execute("INSERT INTO kept_bands SELECT * FROM new_kept")
        for o, k in zip(reps, kept):
            if k:
                self.cache.put(o, sets[o])
        drops = [Drop(o, m[0], float(m[1])) for o, m in sorted(matches.items())]
        st = self.stats
        st.rows += len(ords)
        st.dropped += len(drops)
        st.exact_copies += len(followers)
        st.candidate_pairs += pairs
        st.pairs_verified += verified
        st.sets_reread = self.cache.misses
        for d in drops:
            b = f"{np.floor(d.jaccard * 20) / 20:.2f}"
            st.jaccard_of_dropped[b] = st.jaccard_of_dropped.get(b, 0) + 1
        return drops

    def _prior_candidates(self, rep_ords: np.ndarray, band: np.ndarray) -> dict[int, list[int]]:
        """For each rep of the chunk, the earlier chunks' kept rows sharing a bucket with it, ascending."""
        import pyarrow as pa

        self.db.register("chunk_bands", pa.table({"ord": np.repeat(rep_ords, self.bands), "bucket": band.reshape(-1)}))
        found = self.db.execute("SELECT DISTINCT c.ord, k.ord FROM chunk_bands c JOIN kept_bands k "
                                "ON c.bucket = k.bucket ORDER BY 1, 2").fetchnumpy()
        prior: dict[int, list[int]] = {}
        for j, i in zip(found["ord"].tolist(), found["ord_1"].tolist()):
            prior.setdefault(j, []).append(i)
        return prior

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StreamingDedup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def near_duplicates(texts: Iterable[str], *, ngram: int = 4, threshold: float = 0.7, num_perm: int = 128,
                    seed: int = 1) -> DedupResult:
    """In-memory greedy dedup in input order (for notebooks and tests; `StreamingDedup` runs the same
    `greedy_verify` chunk by chunk with the kept rows' buckets in DuckDB)."""
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
    hasher = WordHasher()
    sets = [shingle_hashes(t, ngram, hasher) for t in texts]
    kept: list[int] = []
    drop = [False] * len(sets)
    for i, s in enumerate(sets):
        if len(s) and any(jaccard(s, sets[j]) >= threshold for j in kept):
            drop[i] = True
        elif len(s):
            kept.append(i)
    return drop
