"""Exact, early-exiting bit-parallel LCS for the fuzzy decontamination step (numba, CPU, releases the GIL).

`rapidfuzz.fuzz.ratio(a, b) = 200·LCS(a, b) / (len(a) + len(b))`, so "ratio >= t" is "LCS >= need" with
need = ceil(t·(la + lb) / 200). `candidates` answers that question for one prompt a against a length-sorted slice
of eval texts b, and proves "no" for nearly every pair long before the full LCS is known:

1. length: LCS <= min(la, lb);
2. characters: LCS <= Σ_c min(count_a(c), count_b(c)) over 38 character buckets (a-z, 0-9, space, other);
3. the LCS itself, bit-parallel (Hyyrö 2004: 64 cells per machine word, one row per character of b), with
   - the Ukkonen band: a common subsequence of length >= need skips at most la - need characters of a and
     lb - need of b, so each of its matches (x, y) has -(lb - need) <= x - y <= la - need. Only the words that
     overlap the band are computed; that is the LCS with every match outside them removed, which equals the
     true LCS whenever that reaches need (rapidfuzz bands the same way under `score_cutoff`);
   - a prefix bound, checked every ROWS_PER_CHECK rows: after i characters of b,
       LCS <= max_k [D(k) + LCS(a[k:], b[i:])],  D(k) = the (banded) LCS of a[:k] and b[:i], read off the bits;
     the second term is at most min(la - k, lb - i) and at most the bucket bound of the two suffixes. With the
     first alone the maximum sits at k* = la - (lb - i), so LCS <= D(k*) + lb - i; with both it is taken over
     blocks of BLOCK characters of a (D(k) <= D(block end), suffix counts at the block start). When the bound
     falls below need, the pair is out. Unrelated texts of similar length fail it after about a fifth of b.
     Only splits k >= the band's bottom are tried (a path reaching need crosses row i inside the band), and the
     words below the band are frozen, so their zero bits are counted once: a check costs O(band), not O(la).
   - the top of the band shrinks too: a match (x, y) on such a path has at most y matches before it and at most
     the bucket bound of a[x:] and b[y:] from it on, so blocks of a whose bound cannot reach need are skipped.
   The row loop runs word-major inside blocks of ROWS_PER_CHECK rows (a word stays in a register across the
   rows), two pairs at a time with their independent carry chains interleaved: about twice as fast here as a
   row-major version of the same kernel (the order rapidfuzz uses for one pair).

Which text is the row text: the prefix bound rules a pair out once the rows have lost more than their slack
(length - need), so the shorter text should be the rows. `candidates` runs the eval texts no longer than the prompt
(bits over the prompt), and leaves the longer ones to `transposed` (bits over the eval text, its prompts as rows).
A bare question and the same question followed by its options (one a prefix of the other) share a lane: the rows
are read once, over the union of their bands, and both bounds are checked on the same bits.

A pair that survives all of it has LCS >= need, i.e. it really matches; the caller rescoring it with rapidfuzz
keeps the answer identical to brute force down to the last floating-point digit.
"""

from __future__ import annotations

import math
from typing import Sequence

import numba as nb
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
ROWS_PER_CHECK = 32  # characters of b between two prefix-bound checks
PASS = 2             # words per pass of the row loop (its body in `scan` is written out for 2)
BLOCK = 32           # characters of a per block of the suffix bucket bound (a divisor of 64)
BUCKET_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 "
N_BUCKETS = len(BUCKET_CHARS) + 1  # + "anything else"

# stats slots filled by `candidates`
IN_WINDOW, CHAR_BOUND, EARLY_EXIT, MATCHED, ROWS_READ, ROWS_TOTAL, TRANSPOSED, SHARED = 0, 1, 2, 3, 4, 5, 6, 7
N_STATS = 8


@nb.njit(inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@nb.njit(inline="always")
def _step(s, m, carry):
    """One word of one row: S' = (S + (S & M) + carry) | (S & ~M), and the carry out."""
    u = s & m
    x = s + u
    y = x + carry
    return y | (s & ~m), np.uint64(x < s) | np.uint64(y < x)


@nb.njit(nogil=True, cache=True)
def scan(pm, psuf, la, e_codes, e_start, e_len, e_hist, bucket, slot, js, needs, out, stats, items, short):
    """out[t] = LCS(a, e_js[t]) when it is >= needs[t], else negative: LCS < needs[t] is proved (-2 by the prefix
    bound, -1 at the end of the text). Runs two lanes at a time over the pairs `items` (indices into js).

    A lane can carry a second pair, short[t] (-1: none): an eval text that is a prefix of e_js[t] (a bare question
    and the same question followed by its options). The lane reads the longer text's rows once and decides both:
    its band is the union of the two bands, the short text's bound is checked on the same bits, and a block of rows
    ends exactly where the short text does. A band that contains a pair's own band keeps that pair's answer exact.

    pm/psuf come from `prepare` (slot set for a's characters); e_codes[e_start[j]:][:e_len[j]] is eval text j,
    e_hist[j] its bucket counts.
    """
    W = (la + 63) >> 6
    dummy = W + 4  # pm has W + 8 columns: words W..W+PASS-2 absorb the last pass's overhang, W+4.. the dummy
    nbk = e_hist.shape[1]
    S = np.empty((2, pm.shape[1]), dtype=np.uint64)
    esuf = np.empty((2, nbk), dtype=np.int64)   # bucket counts of the long text's unread suffix
    ohist = np.zeros((2, nbk), dtype=np.int64)  # bucket counts of the long text past the short one
    # each row's match-mask offset in the flat table: unsigned, so numba adds no negative-index fix-up in the loop
    pmf = pm.reshape(-1)
    stride = pm.shape[1]
    rows = np.zeros((2, ROWS_PER_CHECK), dtype=np.uint64)
    carries = np.zeros((2, ROWS_PER_CHECK), dtype=np.uint64)
    item = np.full(2, -1, dtype=np.int64)  # the long (or only) pair of each lane, -1 = idle
    sh = np.full(2, -1, dtype=np.int64)    # its short pair, -1 = none (or decided)
    live = np.zeros(2, dtype=np.int64)     # 1 while the long pair is undecided
    done = np.zeros(2, dtype=np.int64)     # rows of b read
    high = np.zeros(2, dtype=np.int64)     # highest real word computed so far: the region only grows upward
    first = np.zeros(2, dtype=np.int64)
    passes = np.zeros(2, dtype=np.int64)
    taken = np.zeros(2, dtype=np.int64)
    top = np.zeros(2, dtype=np.int64)      # highest block of a a path reaching need can still use (only rises)
    fw = np.zeros(2, dtype=np.int64)       # words below fw are frozen (below the band: never updated again) ...
    fz = np.zeros(2, dtype=np.int64)       # ... and hold fz zero bits, so the bounds need not re-count them
    nq = psuf.shape[0]
    nxt = 0
    while True:
        for l in range(2):
            if item[l] < 0 and nxt < len(items):
                t = items[nxt]
                nxt += 1
                item[l] = t
                sh[l] = short[t]
                live[l] = 1
                done[l] = 0
                high[l] = -1
                top[l] = 0
                fw[l] = 0
                fz[l] = 0
                for w in range(S.shape[1]):
                    S[l, w] = _ALL
                for h in range(nbk):
                    esuf[l, h] = e_hist[js[t], h]
                    ohist[l, h] = e_hist[js[t], h] - e_hist[js[sh[l]], h] if sh[l] >= 0 else 0
        if item[0] < 0 and item[1] < 0:
            break
        for l in range(2):
            passes[l] = 0
            taken[l] = 0
            for r in range(ROWS_PER_CHECK):
                rows[l, r] = _ZERO
                carries[l, r] = _ZERO
            if item[l] < 0:
                continue
            # the lane's envelope: rows up to the longest undecided text, the smallest need, the widest slacks
            lb = e_len[js[item[l]]]
            need = la + lb + 1
            slack_b = -1
            end = 0
            if live[l]:
                need = needs[item[l]]
                slack_b = lb - need
                end = lb
            if sh[l] >= 0:
                lq = e_len[js[sh[l]]]
                nq_ = needs[sh[l]]
                need = min(need, nq_)
                slack_b = max(slack_b, lq - nq_)
                end = lq  # a block ends where the short text does (a prefix: lq <= lb)
            n = min(ROWS_PER_CHECK, end - done[l])
            taken[l] = n
            # A match (x, y) on a path of length >= need has at most y matches before it and at most
            # min(la - x, lb - y, bucket bound of a[x:] and b[y:]) from it on: block q of a (x >= q·BLOCK) is out of
            # reach for rows y < done + n while done + n + that bound at the block start < need. The sum only grows
            # with done, so the highest reachable block only rises. (The short text's suffix is part of the long
            # one's, so the long text's counts bound both.)
            reach = done[l] + n
            while top[l] + 1 < nq:
                k0 = (top[l] + 1) * BLOCK
                cap = min(la - k0, lb - done[l])
                if reach + cap < need:
                    break
                hsum = 0
                for h in range(nbk):
                    x = psuf[top[l] + 1, h]
                    y = esuf[l, h]
                    hsum += x if x < y else y
                if reach + min(cap, hsum) < need:
                    break
                top[l] += 1
            start = e_start[js[item[l]]] + done[l]
            for r in range(n):
                c = e_codes[start + r]
                esuf[l, bucket[c]] -= 1
                rows[l, r] = np.uint64(slot[c] * stride)
            lo = done[l] - slack_b  # the band: y - x <= lb - need ...
            f = (lo >> 6) if lo > 0 else 0
            while fw[l] < f:  # lo only rises: words below it are final
                fz[l] += 64 - int(_popcount(S[l, fw[l]]))
                fw[l] += 1
            last = min((done[l] + n - 1 + la - need) >> 6, W - 1)  # ... and x - y <= la - need
            last = min(last, ((top[l] + 1) * BLOCK - 1) >> 6)
            last = max(last, high[l])
            if last >= f:
                first[l] = f
                passes[l] = (last - f + PASS) // PASS
                high[l] = min(f + PASS * passes[l] - 1, W - 1)
        # both lanes over this block of rows, word-major, PASS words per pass: the two carry chains are
        # independent, so interleaving them keeps the CPU busy while each waits on its own. A lane with fewer passes
        # runs the rest on `dummy` words (zero match masks, never read). No helper here takes an array: numba
        # reference-counts array arguments with atomic operations on every call, which cost more than the work.
        for t in range(max(passes[0], passes[1])):
            w = first[0] + PASS * t if t < passes[0] else dummy
            v = first[1] + PASS * t if t < passes[1] else dummy
            a0, a1 = S[0, w], S[0, w + 1]
            b0, b1 = S[1, v], S[1, v + 1]
            uw = np.uint64(w)
            uv = np.uint64(v)
            for r in range(ROWS_PER_CHECK):
                ra = rows[0, r] + uw
                rb = rows[1, r] + uv
                a0, c = _step(a0, pmf[ra], carries[0, r])
                b0, d = _step(b0, pmf[rb], carries[1, r])
                a1, c = _step(a1, pmf[ra + _ONE], c)
                b1, d = _step(b1, pmf[rb + _ONE], d)
                carries[0, r] = c
                carries[1, r] = d
            S[0, w], S[0, w + 1] = a0, a1
            S[1, v], S[1, v + 1] = b0, b1
        for l in range(2):
            if item[l] < 0:
                continue
            done[l] += taken[l]
            # the bound of each undecided text of the lane, on the same bits: 0 = the long one, 1 = the short one
            for which in range(2):
                t = item[l] if which == 0 else sh[l]
                if t < 0 or (which == 0 and not live[l]):
                    continue
                lb = e_len[js[t]]
                need = needs[t]
                rest = lb - done[l]
                k = la - rest if rest > 0 else la  # k* = la - rest; at the end, all of a
                # D(k): zero bits of S[l] below k = the LCS of a[:k] with b[:done]. k >= lo (need <= la), so the
                # frozen words all lie below k; words above `high` were never computed and hold no zero.
                z = fz[l]
                for w in range(fw[l], min(k >> 6, high[l] + 1)):
                    z += 64 - int(_popcount(S[l, w]))
                if k & 63 and (k >> 6) <= high[l]:
                    z += (k & 63) - int(_popcount(S[l, k >> 6] & ((_ONE << np.uint64(k & 63)) - _ONE)))
                if rest <= 0:
                    out[t] = z if z >= need else -1
                elif k <= 0:
                    continue
                elif z + rest < need:  # max_k D(k) + min(la - k, rest), exactly: the maximum is at k*
                    out[t] = -2
                    stats[EARLY_EXIT] += 1
                else:
                    # blocks of a: D(block end) + min(la - block start, rest, bucket bound of the two suffixes).
                    # Only blocks from the frozen words up: a path of length >= need crosses row `done` at x >= lo
                    # (the band), so splits below lo need not be tried. Past the computed words D stays flat and
                    # the other two terms only fall, so the first block there that fails ends the search.
                    fails = True
                    d = fz[l]
                    above = (high[l] + 1) * 64
                    for q in range(fw[l] * (64 // BLOCK), nq):
                        k0 = q * BLOCK
                        width = min(k0 + BLOCK, la) - k0
                        if k0 < above:
                            d += width - int(_popcount((S[l, k0 >> 6] >> np.uint64(k0 & 63))
                                                       & ((_ONE << np.uint64(width)) - _ONE)))
                        cap = min(la - k0, rest)
                        if d + cap < need:
                            if k0 >= k or k0 >= above:
                                break  # past k*, or past the computed words: the bound only falls from here
                            continue
                        hsum = 0
                        for h in range(nbk):
                            x = psuf[q, h]
                            y = esuf[l, h] - (ohist[l, h] if which == 1 else 0)
                            hsum += x if x < y else y
                        if d + min(cap, hsum) >= need:
                            fails = False
                            break
                        if k0 >= above:
                            break
                    if not fails:
                        continue
                    out[t] = -2
                    stats[EARLY_EXIT] += 1
                stats[ROWS_TOTAL] += lb
                if which == 0:
                    live[l] = 0
                else:
                    sh[l] = -1
            if not live[l] and sh[l] < 0:
                stats[ROWS_READ] += done[l]
                item[l] = -1


@nb.njit(nogil=True, cache=True)
def prepare(p_codes, slot, bucket, n_buckets):
    """The prompt's match table (slot 0 = a character it lacks: an all-zero row), bucket counts, and bucket counts
    of each suffix a[q·BLOCK:]. Leaves slot[c] set for the prompt's characters; `release` clears it."""
    la = len(p_codes)
    W = (la + 63) >> 6
    n = 0
    for x in range(la):
        c = p_codes[x]
        if c != 0 and slot[c] == 0:
            n += 1
            slot[c] = n
    pm = np.zeros((n + 1, W + 8), dtype=np.uint64)  # + overhang and dummy words for `scan`
    nq = (la + BLOCK - 1) // BLOCK
    psuf = np.zeros((max(nq, 1), n_buckets), dtype=np.int64)
    for x in range(la):
        c = p_codes[x]
        if c != 0:
            pm[slot[c], x >> 6] |= _ONE << np.uint64(x & 63)
            psuf[x // BLOCK, bucket[c]] += 1
    for q in range(nq - 2, -1, -1):
        for h in range(n_buckets):
            psuf[q, h] += psuf[q + 1, h]
    p_hist = psuf[0].copy() if nq else np.zeros(n_buckets, dtype=np.int64)
    return pm, p_hist, psuf


@nb.njit(nogil=True, cache=True)
def release(p_codes, slot):
    for x in range(len(p_codes)):
        slot[p_codes[x]] = 0


@nb.njit(nogil=True, cache=True)
def candidates(p_codes, threshold, e_codes, e_start, e_len, e_hist, bucket, a, b, slot, stats, ext, mark,
               js, needs, res, items, short, t_js, t_needs, transpose=True):
    """Indices j in [a, b) of the eval texts no longer than the prompt whose LCS with it reaches the ratio
    threshold; and the number of longer eval texts that passed the bounds, written to t_js/t_needs for `transposed`.

    Why two paths: the prefix bound rules a pair out once the row text has lost more characters than its slack
    (its length - need), and the shorter text has the smaller slack. So rows run over the shorter text: the eval
    text here (bits over the prompt, one match table per prompt), the prompt in `transposed` (bits over the eval
    text, one table per eval text, shared by every prompt of a batch that meets it). On the bundled data that reads
    about 40% fewer rows than running every pair one way.

    p_codes/e_codes are alphabet ids (0 = a character no eval text has); e_hist[j] the eval texts' bucket counts;
    bucket[id] the bucket of an alphabet id; ext[j] an eval text that has text j as a proper prefix (-1: none), so
    that the two share one lane of `scan`. slot must be all zero and mark all -1 (both are again on return).
    js, needs, res, items, short, t_js and t_needs are scratch of at least b - a entries, reused across prompts
    (fresh pages cost more than the work on short texts).
    """
    la = len(p_codes)
    nbk = e_hist.shape[1]
    pm, p_hist, psuf = prepare(p_codes, slot, bucket, nbk)
    m = 0
    n_t = 0
    for j in range(a, b):
        lb = e_len[j]
        total = la + lb
        floor = threshold * total - 1e-9
        if 200.0 * min(la, lb) < floor:
            continue
        stats[IN_WINDOW] += 1
        inter = 0
        for h in range(nbk):
            x = e_hist[j, h]
            y = p_hist[h]
            inter += x if x < y else y
        if 200.0 * inter < floor:
            continue
        # the smallest LCS whose ratio could reach the threshold, rounded down a hair so float error never prunes
        need = max(int(math.ceil(threshold * total / 200.0 - 1e-4)), 0)
        if transpose and lb > la:
            t_js[n_t] = j
            t_needs[n_t] = need
            n_t += 1
            continue
        js[m] = j
        needs[m] = need
        mark[j] = m
        short[m] = -1
        m += 1
    stats[CHAR_BOUND] += m + n_t
    stats[TRANSPOSED] += n_t
    # A text whose extension is also a candidate rides in the extension's lane: one prefix per extension, and a
    # text that carries a prefix carries no more (js is sorted by length, so a prefix comes before its extension).
    n_items = 0
    for t in range(m):
        e = ext[js[t]]
        u = mark[e] if e >= 0 else -1
        if u >= 0 and short[u] < 0 and short[t] < 0:
            short[u] = t
            stats[SHARED] += 1
        else:
            items[n_items] = t
            n_items += 1
    for t in range(m):
        mark[js[t]] = -1
    scan(pm, psuf, la, e_codes, e_start, e_len, e_hist, bucket, slot, js[:m], needs[:m], res[:m], stats,
         items[:n_items], short[:m])
    release(p_codes, slot)
    hits = js[:m][res[:m] >= 0]
    stats[MATCHED] += len(hits)
    return hits, n_t


@nb.njit(nogil=True, cache=True)
def transposed(e_codes, e_start, e_len, bucket, slot, stats, pair_j, pair_p, pair_need, p_codes, p_start, p_len,
               p_hist, out):
    """The pairs `candidates` left for this path (eval text longer than the prompt), grouped by eval text
    (pair_j sorted): per eval text one match table, its prompts as the rows. out[k] >= 0 where pair k matches."""
    k = 0
    n = len(pair_j)
    nbk = p_hist.shape[1]
    while k < n:
        j = pair_j[k]
        e = k
        while e < n and pair_j[e] == j:
            e += 1
        codes = e_codes[e_start[j]:e_start[j] + e_len[j]]
        pm, _, psuf = prepare(codes, slot, bucket, nbk)
        m = e - k
        scan(pm, psuf, len(codes), p_codes, p_start, p_len, p_hist, bucket, slot, pair_p[k:e], pair_need[k:e],
             out[k:e], stats, np.arange(m), np.full(m, -1, dtype=np.int64))
        release(codes, slot)
        k = e
    for k in range(n):
        if out[k] >= 0:
            stats[MATCHED] += 1


def bucket_of(char: str) -> int:
    """The character bucket of the bucket bound: a-z, 0-9, space, or the last one for anything else."""
    k = BUCKET_CHARS.find(char)
    return k if k >= 0 and len(char) == 1 else N_BUCKETS - 1


def bucket_table(chars: Sequence[str]) -> np.ndarray:
    """bucket[id] for alphabet ids 1..len(chars) (chars[id - 1]); id 0, a character no text has, is "other"."""
    return np.array([N_BUCKETS - 1] + [bucket_of(c) for c in chars], dtype=np.int64)


def pack(codes: np.ndarray, lengths: np.ndarray, bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For texts concatenated as alphabet ids: each text's start in `codes` and its bucket counts (e_start, e_hist)."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        starts[1:] = np.cumsum(lengths)[:-1]
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    hist = np.bincount(owner * N_BUCKETS + bucket[codes], minlength=len(lengths) * N_BUCKETS)
    return starts, hist.reshape(len(lengths), N_BUCKETS).astype(np.int32)


def lcs_if_at_least(a: str, bs: Sequence[str], needs: Sequence[int], share_prefixes: bool = False) -> list[int]:
    """For each b: LCS(a, b) when it is >= its need, else a negative number. The batch path of `candidates`
    (two lanes at a time), for tests and for reading. With share_prefixes, a b that is a prefix of another b (equal
    included) rides in that one's lane, as a bare question does in its question + options."""
    chars = sorted(set(a).union(*bs))
    alphabet = {c: k + 1 for k, c in enumerate(chars)}
    bucket = bucket_table(chars)
    a_codes = np.array([alphabet[c] for c in a], dtype=np.int32)
    e_codes = np.array([alphabet[c] for b in bs for c in b], dtype=np.int32)
    e_len = np.array([len(b) for b in bs], dtype=np.int64)
    e_start, e_hist = pack(e_codes, e_len, bucket)
    short = np.full(len(bs), -1, dtype=np.int64)
    carried: set[int] = set()
    if share_prefixes:
        for t in sorted(range(len(bs)), key=lambda t: len(bs[t])):
            if t in carried or short[t] >= 0:
                continue
            for u in range(len(bs)):
                if u != t and short[u] < 0 and u not in carried and len(bs[u]) >= len(bs[t]) \
                        and bs[u].startswith(bs[t]):
                    short[u] = t
                    carried.add(t)
                    break
    items = np.array([t for t in range(len(bs)) if t not in carried], dtype=np.int64)
    slot = np.zeros(len(alphabet) + 1, dtype=np.int32)
    pm, _, psuf = prepare(a_codes, slot, bucket, N_BUCKETS)
    out = np.zeros(len(bs), dtype=np.int64)
    try:
        scan(pm, psuf, len(a), e_codes, e_start, e_len, e_hist, bucket, slot, np.arange(len(bs), dtype=np.int64),
             np.asarray(needs, dtype=np.int64), out, np.zeros(N_STATS, dtype=np.int64), items, short)
    finally:
        release(a_codes, slot)
    return [int(x) for x in out]
