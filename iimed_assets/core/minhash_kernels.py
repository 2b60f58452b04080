"""numba kernels of the shingle and MinHash hot loops (`core.dedup` imports this module lazily, so importing the
code location does not load numba).

Each kernel computes exactly what its pure-Python/numpy definition in `core.dedup` says, bit for bit:

- `ascii_word_hashes`: the lowercased `[A-Za-z0-9_]+` runs of ASCII texts (what `dedup.tokens` splits an ASCII
  text into), each hashed as `WordHasher` does: (crc32(word) << 32) | crc32(word, 0x5BD1E995), zlib's crc32.
- `ngram_hashes`: each text's word n-gram hashes, `h = mix(h·P1 + w)` over the n words (zero-padded when the
  text is shorter than n words).
- `min_signatures`: per text, the minimum over its shingles of `a·x + b mod 2^32` for every permutation, with
  x = the shingle hash folded to 32 bits; one pass over the shingles, the permutation loop vectorised.
"""

from __future__ import annotations

import numba as nb
import numpy as np


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()
_FF = np.uint32(0xFFFFFFFF)
_SEED2 = np.uint32(0x5BD1E995)
_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xBF58476D1CE4E5B9)
_P3 = np.uint64(0x94D049BB133111EB)


@nb.njit(inline="always")
def _is_word(c):
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


@nb.njit(inline="always")
def _mix(x):
    x = x ^ (x >> np.uint64(30))
    x = x * _P2
    x = x ^ (x >> np.uint64(27))
    x = x * _P3
    return x ^ (x >> np.uint64(31))


@nb.njit(nogil=True, cache=True)
def ascii_word_hashes(buf, starts, ends, table):
    """Word hashes of the texts buf[starts[i]:ends[i]] (ASCII bytes), flat, and each text's word count."""
    n_docs = len(starts)
    out = np.empty((len(buf) + 1) // 2 + 1, dtype=np.uint64)  # a word needs a character and a separator
    lengths = np.zeros(n_docs, dtype=np.int64)
    k = 0
    for d in range(n_docs):
        i, end = starts[d], ends[d]
        while i < end:
            c = buf[i]
            if not _is_word(c):
                i += 1
                continue
            c1 = _FF
            c2 = _SEED2 ^ _FF
            while i < end:
                c = buf[i]
                if not _is_word(c):
                    break
                if 65 <= c <= 90:
                    c += 32
                c1 = table[(c1 ^ np.uint32(c)) & np.uint32(0xFF)] ^ (c1 >> np.uint32(8))
                c2 = table[(c2 ^ np.uint32(c)) & np.uint32(0xFF)] ^ (c2 >> np.uint32(8))
                i += 1
            out[k] = (np.uint64(c1 ^ _FF) << np.uint64(32)) | np.uint64(c2 ^ _FF)
            k += 1
            lengths[d] += 1
    return out[:k], lengths


@nb.njit(nogil=True, cache=True)
def ngram_hashes(words, lengths, ngram):
    """(shingle hashes, shingles per text) from the texts' word hashes laid end to end; a text shorter than n
    words is one shingle of its words and zeros, a text with no word has none."""
    n_docs = len(lengths)
    counts = np.zeros(n_docs, dtype=np.int64)
    total = 0
    for d in range(n_docs):
        if lengths[d] > 0:
            counts[d] = max(lengths[d] - ngram + 1, 1)
            total += counts[d]
    out = np.empty(total, dtype=np.uint64)
    w0 = 0
    k = 0
    for d in range(n_docs):
        nw = lengths[d]
        for s in range(counts[d]):
            h = np.uint64(0)
            for j in range(ngram):
                w = words[w0 + s + j] if s + j < nw else np.uint64(0)
                h = _mix(h * _P1 + w)
            out[k] = h
            k += 1
        w0 += nw
    return out, counts


@nb.njit(nogil=True, cache=True)
def min_signatures(hashes, counts, a, b):
    """(texts × permutations) uint32: min over each text's shingles of a·x + b (mod 2^32), x = h ^ (h >> 32)
    folded to 32 bits; a text with no shingle gets all 0xFFFFFFFF."""
    n_docs, n_perm = len(counts), len(a)
    out = np.full((n_docs, n_perm), _FF, dtype=np.uint32)
    s = 0
    for d in range(n_docs):
        row = out[d]
        for j in range(s, s + counts[d]):
            h = hashes[j]
            x = np.uint64((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF))
            for p in range(n_perm):
                v = np.uint32((a[p] * x + b[p]) & np.uint64(0xFFFFFFFF))  # numba computes in 64 bits: wrap
                if v < row[p]:
                    row[p] = v
        s += counts[d]
    return out
