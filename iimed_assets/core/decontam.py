"""Decontamination against the evaluation sets, in the card's two steps.

    ngram_contaminated(texts, eval_texts, n=8) -> [bool]          # step 1: shared word 8-grams (open-r1 method)
    fuzzy_contaminated(texts, eval_texts, threshold=80.0) -> [bool]  # step 2: rapidfuzz ratio >= 80

Step 1 normalises wider than open-r1 (lowercase + whitespace-collapsed words): Unicode NFKC, casefold, and
punctuation ignored (words are `\\w+` runs). Prompts first lose the instruction boilerplate that training sets
wrap around questions ("Please reason step by step, and put your final answer within \\boxed{}"). Plain
any-shared-8-gram matching also flags clean prompts through exam phrasing that many eval items share ("which of
the following is the most likely diagnosis"), so an n-gram that occurs in more than `max_item_df` distinct eval
items is left out of the index, and a text must share at least `min_shared` (3) of one item's n-grams (all of
them when the item has fewer): a copied question shares nearly all, a stock phrase one or two. Measured in
docs/decontamination.md.

Step 2 is exact with respect to its definition — contaminated iff `fuzz.ratio(p(prompt), p(eval_text)) >= t`
for some eval text, with `p = rapidfuzz.utils.default_process` — but never scores every pair: the ratio bounds
the length of a match (2·min(l1, l2) / (l1 + l2) >= t / 100), so each prompt is only scored against the eval
texts in its length window, in length-sorted blocks, with rapidfuzz's `score_cutoff`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from iimed_assets.core.dedup import _WordHasher, shingle_batch, tokens

# Instruction wrappers that training prompts add around a question (and our own QA templates add), each with a
# word it always contains whatever its spacing: the regex only runs when that word is there.
BOILERPLATE = [(hint, re.compile(p, re.I | re.S)) for hint, p in (
    ("reason", r"please\s+reason\s+step\s+by\s+step[^\n]*?(?:\\boxed\s*\{\s*\}|boxed\{\})\.?"),
    ("boxed", r"return\s+your\s+final\s+response\s+within\s+\\boxed\s*\{\s*\}[^\n]*"),
    ("boxed", r"put\s+(?:the\s+letter\s+of\s+)?your\s+final\s+answer[^\n]*?\\boxed\s*\{\s*\}\.?"),
    ("yes,", r"answer\s+the\s+question\s+with\s+yes,\s*no\s+or\s+maybe\.?"),
    ("letter", r"(?:answer\s+with\s+)?(?:only\s+)?the\s+letter\s+of\s+the\s+correct\s+(?:answer|option)\.?"),
    ("step", r"let'?s\s+think\s+step\s+by\s+step\.?"),
    ("", r"^\s*(?:context|question)\s*:\s*"),
)]


def strip_boilerplate(text: str) -> str:
    text = text or ""
    lower = text.lower()
    for hint, pattern in BOILERPLATE:
        if hint in lower:
            text = pattern.sub(" ", text)
    return text.strip()


_WORD = re.compile(r"\w+")


def normalized_words(text: str) -> list[str]:
    """NFKC, casefold, punctuation dropped: the words the n-gram test compares."""
    text = text or ""
    if text.isascii():  # NFKC is the identity and casefold is lower() on ASCII
        return tokens(text)
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _grams(texts: Sequence[str], n: int, hasher: _WordHasher) -> tuple[np.ndarray, np.ndarray]:
    return shingle_batch(texts, n, hasher, tokenize=normalized_words)


@dataclass(frozen=True)
class EvalItem:
    eval_set: str
    item_id: str
    texts: tuple[str, ...]  # e.g. (bare question, question + options)


@dataclass(frozen=True)
class NgramHit:
    eval_set: str
    item_id: str
    ngram: str


class NgramIndex:
    """Word n-grams of every eval item (each item indexed under all its texts), minus n-grams that occur in more
    than `max_item_df` distinct eval items. A text is contaminated by an item when it shares at least
    `min(min_shared, n-grams of the item's question)` of the item's indexed n-grams: a copied question shares
    all of them, while a stock phrase ("have been experiencing shortness of breath and chest pain") shares one or
    two. Lookups are vectorised: a sorted uint64 array + searchsorted."""

    def __init__(self, items: Iterable[EvalItem], n: int = 8, max_item_df: int = 3, min_shared: int = 3):
        self.n, self.max_item_df, self.min_shared = n, max_item_df, min_shared
        self.hasher = _WordHasher()
        self.items: list[EvalItem] = []
        texts: list[str] = []
        owner_of_text: list[int] = []
        bare_text: list[bool] = []
        seen: dict[str, int] = {}
        for item in items:
            # The same question in two eval sets (MedQA 4- and 5-option, MedBullets op4/op5) is one item for the
            # document frequency, else its own n-grams would look "common".
            key = " ".join(normalized_words(item.texts[0]))
            idx = seen.get(key)
            if idx is None:
                idx = seen[key] = len(self.items)
                self.items.append(item)
            for k, t in enumerate(item.texts):
                texts.append(t)
                owner_of_text.append(idx)
                bare_text.append(k == 0)
        self.dropped_common = 0
        self.hashes = np.empty(0, dtype=np.uint64)
        self.owner = np.empty(0, dtype=np.int64)
        self.need = np.ones(len(self.items), dtype=np.int64)
        h, counts = _grams(texts, n, self.hasher)
        if not len(h):
            return
        o = np.repeat(np.array(owner_of_text, dtype=np.int64), counts)
        bare = np.repeat(np.array(bare_text, dtype=bool), counts)
        order = np.lexsort((~bare, o, h))  # per (n-gram, item): the bare-question occurrence first
        h, o, bare = h[order], o[order], bare[order]
        first_of_pair = np.ones(len(h), dtype=bool)
        first_of_pair[1:] = (h[1:] != h[:-1]) | (o[1:] != o[:-1])
        h, o, bare = h[first_of_pair], o[first_of_pair], bare[first_of_pair]
        uh, first, df = np.unique(h, return_index=True, return_counts=True)
        common = uh[df > max_item_df]
        self.dropped_common = len(common)
        kept = ~np.isin(h, common)
        # An item asks for min(min_shared, its question's indexed n-grams): a bare copy of a short question counts.
        bare_counts = np.bincount(o[kept & bare], minlength=len(self.items))
        self.need = np.clip(np.minimum(bare_counts, min_shared), 1, None)
        keep = df <= max_item_df
        self.hashes, self.owner = uh[keep], o[first[keep]]
        # A 16 MB presence bitmap on the low 24 bits answers most lookups without a binary search.
        self.bitmap = np.zeros(1 << 24, dtype=bool)
        self.bitmap[(self.hashes & np.uint64(0xFFFFFF)).astype(np.int64)] = True

    def __len__(self) -> int:
        return len(self.hashes)

    def match_batch(self, texts: Sequence[str]) -> list[NgramHit | None]:
        """For each text (boilerplate already stripped), the eval item it copies (with one shared n-gram as
        evidence), or None."""
        out: list[NgramHit | None] = [None] * len(texts)
        if not len(self.hashes) or not texts:
            return out
        h, counts = _grams(texts, self.n, self.hasher)
        if not len(h):
            return out
        doc = np.repeat(np.arange(len(texts)), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        maybe = np.flatnonzero(self.bitmap[(h & np.uint64(0xFFFFFF)).astype(np.int64)])
        pos = np.zeros(len(h), dtype=np.int64)
        found = np.searchsorted(self.hashes, h[maybe])
        found[found >= len(self.hashes)] = 0
        pos[maybe] = found
        hit = maybe[self.hashes[found] == h[maybe]]
        if not len(hit):
            return out
        # distinct (text, item, n-gram) triples -> shared n-grams per (text, item)
        triples = np.unique(np.stack([doc[hit], self.owner[pos[hit]], pos[hit]], axis=1), axis=0)
        pairs, shared = np.unique(triples[:, :2], axis=0, return_counts=True)
        ok = shared >= self.need[pairs[:, 1]]
        for d, item_idx in pairs[ok]:
            if out[d] is not None:
                continue
            j = hit[(doc[hit] == d) & (self.owner[pos[hit]] == item_idx)][0]
            item = self.items[int(item_idx)]
            k = int(j - offsets[d])
            words = normalized_words(texts[d])
            out[d] = NgramHit(item.eval_set, item.item_id, " ".join(words[k:k + self.n]))
        return out


def ngram_contaminated(texts: Sequence[str], eval_texts: Sequence[str], *, n: int = 8, max_item_df: int = 3,
                       min_shared: int = 3) -> list[bool]:
    """True where a text (boilerplate stripped) shares word n-grams with an eval text: at least
    `min(min_shared, the eval text's n-grams)` of them, ignoring n-grams common to more than `max_item_df` eval
    texts."""
    index = NgramIndex((EvalItem("eval", str(i), (t,)) for i, t in enumerate(eval_texts)), n, max_item_df, min_shared)
    return [hit is not None for hit in index.match_batch([strip_boilerplate(t) for t in texts])]


# ---- step 2: fuzzy ----------------------------------------------------------------------------------------

def length_window(length: int, threshold: float) -> tuple[int, int]:
    """The eval-text lengths that can reach `ratio >= threshold` with a text of `length` characters.

    ratio = 100·(1 - indel/(l1+l2)) and indel >= |l1 - l2|, so ratio <= 200·min(l1, l2)/(l1 + l2): a match needs
    l2 in [l1·t/(200-t), l1·(200-t)/t]. The bounds are widened by one character against float rounding.
    """
    if threshold <= 0:
        return 0, 1 << 62
    lo = math.floor(length * threshold / (200.0 - threshold)) - 1
    hi = math.ceil(length * (200.0 - threshold) / threshold) + 1 if threshold < 200 else length
    return max(lo, 0), hi


@dataclass(frozen=True)
class FuzzyHit:
    eval_index: int
    score: float


_HIST_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "
_HIST_MAP = np.full(128, len(_HIST_ALPHABET), dtype=np.int64)
for _i, _c in enumerate(_HIST_ALPHABET):
    _HIST_MAP[ord(_c)] = _i


def char_histograms(texts: Sequence[str]) -> np.ndarray:
    """Per text, counts of a-z, 0-9, space and "anything else" (38 buckets)."""
    out = np.zeros((len(texts), len(_HIST_ALPHABET) + 1), dtype=np.int32)
    for i, t in enumerate(texts):
        if t:
            codes = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32)
            idx = np.where(codes < 128, codes, 0).astype(np.int64)
            buckets = _HIST_MAP[idx]
            buckets[codes >= 128] = len(_HIST_ALPHABET)
            out[i] = np.bincount(buckets, minlength=out.shape[1])
    return out


class FuzzyIndex:
    """Eval texts after `default_process`, sorted by length, for blocked `fuzz.ratio` scoring.

    Two necessary conditions prune pairs before any ratio is computed, both exact consequences of
    ratio = 100·2·LCS/(l1 + l2):
      - length: LCS <= min(l1, l2) gives the window of `length_window`;
      - characters: LCS <= Σ_c min(count_a(c), count_b(c)) over any bucketing of the characters (merging buckets
        can only raise the sum), so 200·Σ min(...)/(l1 + l2) < t rules the pair out.
    Only the survivors are scored by rapidfuzz, with `score_cutoff`. The answer equals brute force.
    """

    def __init__(self, eval_texts: Sequence[str], threshold: float = 80.0):
        from rapidfuzz.utils import default_process

        self.threshold = threshold
        processed = [default_process(t or "") for t in eval_texts]
        order = sorted(range(len(processed)), key=lambda i: len(processed[i]))
        self.texts = [processed[i] for i in order]
        self.original_index = np.array(order, dtype=np.int64)
        self.lengths = np.array([len(t) for t in self.texts], dtype=np.int64)
        self.hist = char_histograms(self.texts).astype(np.int16 if (self.lengths.max(initial=0) < 32_000) else np.int32)
        self.exact: dict[str, int] = {}
        for i, t in enumerate(self.texts):
            self.exact.setdefault(t, i)
        self.pairs_in_window = 0
        self.pairs_scored = 0

    def match_batch(self, texts: Sequence[str], block: int = 32, window_chunk: int = 2048) -> list[FuzzyHit | None]:
        """For each text, the best-scoring eval text with ratio >= threshold (exactly as brute force), or None."""
        from rapidfuzz import fuzz, process
        from rapidfuzz.utils import default_process

        out: list[FuzzyHit | None] = [None] * len(texts)
        if not self.texts:
            return out
        t = self.threshold
        processed = [default_process(x or "") for x in texts]
        todo = []
        for i, p in enumerate(processed):
            j = self.exact.get(p)
            if j is not None:
                out[i] = FuzzyHit(int(self.original_index[j]), 100.0)
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(processed[i]))
        lengths = np.array([len(processed[i]) for i in todo], dtype=np.int64)
        hists = char_histograms([processed[i] for i in todo]).astype(self.hist.dtype)
        for start in range(0, len(todo), block):
            rows = slice(start, start + block)
            lo_b = length_window(int(lengths[rows][0]), t)[0]
            hi_b = length_window(int(lengths[rows][-1]), t)[1]
            a, b = int(np.searchsorted(self.lengths, lo_b, "left")), int(np.searchsorted(self.lengths, hi_b, "right"))
            for c0 in range(a, b, window_chunk):
                c1 = min(b, c0 + window_chunk)
                le = self.lengths[c0:c1]
                lp = lengths[rows]
                total = lp[:, None] + le[None, :]
                # the length bound, per pair: 200·min(l1, l2) >= t·(l1 + l2)
                ok = 200.0 * np.minimum(lp[:, None], le[None, :]) >= t * total - 1e-9
                self.pairs_in_window += int(ok.sum())
                if not ok.any():
                    continue
                inter = np.minimum(hists[rows][:, None, :], self.hist[None, c0:c1, :]).sum(axis=2, dtype=np.int64)
                ok &= 200.0 * inter >= t * total - 1e-9
                for r, cols in zip(*_rows_with_candidates(ok)):
                    i = todo[start + r]
                    cand = [self.texts[c0 + c] for c in cols]
                    self.pairs_scored += len(cand)
                    scores = process.cdist([processed[i]], cand, scorer=fuzz.ratio, processor=None, score_cutoff=t)[0]
                    k = int(scores.argmax())
                    if scores[k] >= t and (out[i] is None or scores[k] > out[i].score):
                        out[i] = FuzzyHit(int(self.original_index[c0 + cols[k]]), float(scores[k]))
        return out


def _rows_with_candidates(mask: np.ndarray):
    rows = np.flatnonzero(mask.any(axis=1))
    return rows, [np.flatnonzero(mask[r]) for r in rows]


def fuzzy_contaminated(texts: Sequence[str], eval_texts: Sequence[str], *, threshold: float = 80.0) -> list[bool]:
    """True where `fuzz.ratio(default_process(text), default_process(eval_text)) >= threshold` for some eval
    text: the brute-force answer, computed on length-blocked candidates only."""
    index = FuzzyIndex(eval_texts, threshold)
    return [hit is not None for hit in index.match_batch(texts)]
