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
docs/cleaning.md ("Decontamination", step 1).

Step 2 is exact with respect to its definition — contaminated iff `fuzz.ratio(p(prompt), p(eval_text)) >= t`
for some eval text, with `p = rapidfuzz.utils.default_process` — but never scores every pair: the ratio bounds
the length of a match (2·min(l1, l2) / (l1 + l2) >= t / 100), so each prompt only meets the eval texts in its
length window, and there `core.lcs` proves nearly every pair below the threshold with cheap exact bounds
(character counts, then a banded bit-parallel LCS that stops once its prefix bound fails). rapidfuzz scores only
the pairs that really match.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from iimed_assets.core.dedup import WordHasher, shingle_batch, tokens

# `core.lcs` (numba) is imported where the fuzzy step runs, so importing this module stays light.

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


def _grams(texts: Sequence[str], n: int, hasher: WordHasher) -> tuple[np.ndarray, np.ndarray]:
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
        self.hasher = WordHasher()
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


_MAX_CODE = 0x110000


def _code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' Unicode code points, concatenated, and each text's length."""
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    flat = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32) if len(texts) else np.zeros(0, np.uint32)
    return flat, lengths


class FuzzyIndex:
    """Eval texts after `default_process`, sorted by length, for exact `fuzz.ratio >= threshold` matching.

    Per prompt, only the eval texts in the length window of `length_window` are looked at, and each pair must pass
    the exact bounds of `core.lcs` (characters, then a banded bit-parallel LCS that stops as soon as its prefix
    bound rules the pair out). Survivors really reach the threshold; rapidfuzz scores them for the reported score.
    The flags equal brute-force `process.cdist(..., scorer=fuzz.ratio, score_cutoff=threshold)`.
    """

    def __init__(self, eval_texts: Sequence[str], threshold: float = 80.0):
        from rapidfuzz.utils import default_process

        from iimed_assets.core import lcs

        self.threshold = threshold
        processed = [default_process(t or "") for t in eval_texts]
        first: dict[str, int] = {}  # identical texts score identically: keep the first (10% of the bundled set)
        for i, t in enumerate(processed):
            first.setdefault(t, i)
        order = sorted(first.values(), key=lambda i: len(processed[i]))
        self.texts = [processed[i] for i in order]
        self.original_index = np.array(order, dtype=np.int64)
        flat, self.lengths = _code_points(self.texts)
        # dense alphabet ids 1..A over the characters the eval texts use; 0 = a character none of them has
        present = np.zeros(_MAX_CODE, dtype=bool)
        present[flat] = True
        self.alphabet = np.cumsum(present, dtype=np.int32) * present
        self.bucket = lcs.bucket_table([chr(c) for c in np.flatnonzero(present)])
        self.codes = self.alphabet[flat]
        self.starts, self.hist = lcs.pack(self.codes, self.lengths, self.bucket)
        self.exact = {t: i for i, t in enumerate(self.texts)}
        # Rows run over the shorter text of each pair (`lcs.candidates`): a longer eval text's pairs are collected
        # and run once per eval text over a chunk of prompts. That pays when several prompts of a chunk meet the same
        # eval text (1.09x at 1,000 prompts, measured) and costs more than it saves below a few hundred (0.92x at
        # 100), so smaller chunks run every pair from the prompt's side.
        self.chunk = 1000
        self.transpose_min = 500  # 0: always, a huge number: never (the answer is the same either way)
        # ext[j]: a text that has text j as a proper prefix (a bare question and the same question + options:
        # 41% of the bundled texts), -1 if none. The LCS kernel reads the shared prefix once for both.
        self.ext = np.full(len(self.texts), -1, dtype=np.int64)
        by_text = sorted(range(len(self.texts)), key=self.texts.__getitem__)
        for i, j in zip(by_text, by_text[1:]):  # a prefix of any text is a prefix of the next one in sort order
            if self.texts[j].startswith(self.texts[i]):
                self.ext[i] = j
        self.pairs_in_window = 0    # pairs inside the length window
        self.pairs_lcs = 0          # ... that passed the character bound and went to the bit-parallel LCS
        self.pairs_early_exit = 0   # ... that its prefix bound dropped before the end of the text
        self.pairs_scored = 0       # ... that reached the threshold and rapidfuzz scored
        self.lcs_rows_read = 0      # characters of row text the LCS kernel read, of
        self.lcs_rows_total = 0     # ... the characters of the row texts it was given
        self.pairs_transposed = 0   # kernel pairs run with the prompt as the row text (the eval text is longer)
        self.pairs_shared = 0       # kernel pairs decided in the lane of their extension (bare question + options)

    def match_batch(self, texts: Sequence[str], workers: int = 1) -> list[FuzzyHit | None]:
        """For each text, the best-scoring eval text with ratio >= threshold (exactly as brute force), or None.

        `workers` > 1 splits the texts over threads (the LCS kernel releases the GIL)."""
        from rapidfuzz.utils import default_process

        from iimed_assets.core import lcs

        out: list[FuzzyHit | None] = [None] * len(texts)
        if not self.texts or not len(texts):
            return out
        processed = [default_process(x or "") for x in texts]
        workers = max(1, min(workers, len(texts)))
        if workers == 1:
            stats = self._match(processed, range(len(texts)), out)
        else:
            from concurrent.futures import ThreadPoolExecutor

            parts = [range(k, len(texts), workers) for k in range(workers)]
            with ThreadPoolExecutor(workers) as pool:
                stats = sum(pool.map(lambda part: self._match(processed, part, out), parts))
        self.pairs_in_window += int(stats[lcs.IN_WINDOW])
        self.pairs_lcs += int(stats[lcs.CHAR_BOUND])
        self.pairs_early_exit += int(stats[lcs.EARLY_EXIT])
        self.pairs_scored += int(stats[lcs.MATCHED])
        self.lcs_rows_read += int(stats[lcs.ROWS_READ])
        self.lcs_rows_total += int(stats[lcs.ROWS_TOTAL])
        self.pairs_transposed += int(stats[lcs.TRANSPOSED])
        self.pairs_shared += int(stats[lcs.SHARED])
        return out

    def _match(self, processed: list[str], rows: Iterable[int], out: list[FuzzyHit | None]) -> np.ndarray:
        from rapidfuzz import fuzz, process

        from iimed_assets.core import lcs

        t = self.threshold
        stats = np.zeros(lcs.N_STATS, dtype=np.int64)
        slot = np.zeros(len(self.bucket), dtype=np.int32)
        mark = np.full(len(self.texts), -1, dtype=np.int64)
        scratch = [np.empty(len(self.texts), dtype=np.int64) for _ in range(7)]
        rows = list(rows)
        chunk = self.chunk
        for start in range(0, len(rows), chunk):
            transpose = len(rows[start:start + chunk]) >= self.transpose_min
            hits: dict[int, list[int]] = {}
            # eval texts no longer than the prompt: one prompt at a time (`lcs.candidates`); the longer ones are
            # collected and run per eval text over all prompts of the chunk (`lcs.transposed`)
            t_codes, t_pairs = [], []
            for i in rows[start:start + chunk]:
                p = processed[i]
                j = self.exact.get(p)
                if j is not None:
                    out[i] = FuzzyHit(int(self.original_index[j]), 100.0)
                    continue
                lo, hi = length_window(len(p), t)
                a, b = int(np.searchsorted(self.lengths, lo, "left")), int(np.searchsorted(self.lengths, hi, "right"))
                if a >= b:
                    continue
                codes = self.alphabet[_code_points([p])[0]]
                cols, n_t = lcs.candidates(codes, float(t), self.codes, self.starts, self.lengths, self.hist,
                                           self.bucket, a, b, slot, stats, self.ext, mark, *scratch,
                                           transpose)
                hits[i] = cols.tolist()
                if n_t:
                    t_pairs.append((i, len(t_codes), scratch[5][:n_t].copy(), scratch[6][:n_t].copy()))
                    t_codes.append(codes)
            if t_pairs:
                p_len = np.array([len(c) for c in t_codes], dtype=np.int64)
                p_codes = np.concatenate(t_codes).astype(self.codes.dtype)
                p_start, p_hist = lcs.pack(p_codes, p_len, self.bucket)
                pair_j = np.concatenate([js for _, _, js, _ in t_pairs])
                pair_p = np.concatenate([np.full(len(js), k, dtype=np.int64) for _, k, js, _ in t_pairs])
                pair_need = np.concatenate([needs for _, _, _, needs in t_pairs])
                order = np.argsort(pair_j, kind="stable")
                pair_j, pair_p, pair_need = pair_j[order], pair_p[order], pair_need[order]
                res = np.empty(len(pair_j), dtype=np.int64)
                lcs.transposed(self.codes, self.starts, self.lengths, self.bucket, slot, stats, pair_j, pair_p,
                               pair_need, p_codes, p_start, p_len, p_hist, res)
                prompt_of = [i for i, _, _, _ in t_pairs]
                for k in np.flatnonzero(res >= 0).tolist():
                    hits[prompt_of[pair_p[k]]].append(int(pair_j[k]))
            for i, cols in hits.items():
                if cols:
                    scores = process.cdist([processed[i]], [self.texts[c] for c in cols], scorer=fuzz.ratio,
                                           processor=None, score_cutoff=t)[0]
                    k = int(scores.argmax())
                    if scores[k] >= t:
                        out[i] = FuzzyHit(int(self.original_index[cols[k]]), float(scores[k]))
        return stats


def fuzzy_contaminated(texts: Sequence[str], eval_texts: Sequence[str], *, threshold: float = 80.0) -> list[bool]:
    """True where `fuzz.ratio(default_process(text), default_process(eval_text)) >= threshold` for some eval
    text: the brute-force answer, computed on length-blocked candidates only."""
    index = FuzzyIndex(eval_texts, threshold)
    return [hit is not None for hit in index.match_batch(texts)]


# ---- the stage: eval items in, contaminated prompts out -------------------------------------------------

def eval_items(rows: Iterable[tuple[str, str, str, str | None, str | None]]) -> list[EvalItem]:
    """Eval items from `eval_items` rows (eval set, id, prompt, meta question, meta context), each indexed as its
    bare question and as the full prompt (question + options, or context + question)."""
    items = []
    for source, rid, prompt, question, context in rows:
        bare = question or (prompt[len(context):].strip() if context and prompt.startswith(context) else prompt)
        items.append(EvalItem(source, rid, tuple(dict.fromkeys([bare, prompt]))))
    return items


@dataclass(frozen=True)
class Contamination:
    """A prompt that copies an eval item: which step caught it, the item, and the evidence (the shared n-gram, or
    the fuzzy score)."""

    row_id: str
    step: str  # "ngram" | "fuzzy"
    eval_set: str
    item_id: str
    evidence: str

    @property
    def reason(self) -> str:
        return f"contaminated_{self.step}"

    @property
    def detail(self) -> str:
        what = f"ngram={self.evidence!r}" if self.step == "ngram" else f"score={self.evidence}"
        return f"eval_set={self.eval_set} item={self.item_id} {what}"


@dataclass
class DecontamStats:
    rows: int = 0
    by_step: Counter = field(default_factory=Counter)
    by_eval_set: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str, str, str]] = field(default_factory=list)  # (step, eval set, prompt, evidence)


class Decontaminator:
    """The card's two steps over batches of prompts: boilerplate stripped, then word n-grams (`NgramIndex`), then
    fuzzy ratio >= threshold (`FuzzyIndex`) for the prompts step 1 let through."""

    def __init__(self, items: Sequence[EvalItem], *, ngram: int = 8, max_item_df: int = 3, min_shared: int = 3,
                 fuzzy_threshold: float = 80.0, fuzzy_workers: int = 1, max_examples: int = 5) -> None:
        self.items = list(items)
        self.ngram_index = NgramIndex(self.items, ngram, max_item_df, min_shared)
        self.fuzzy_owner = [k for k, item in enumerate(self.items) for _ in item.texts]
        self.fuzzy_texts = [t for item in self.items for t in item.texts]
        self.fuzzy_index = FuzzyIndex(self.fuzzy_texts, fuzzy_threshold)
        self.fuzzy_workers, self.max_examples = fuzzy_workers, max_examples
        self.stats = DecontamStats()

    def process(self, ids: Sequence[str], prompts: Sequence[str]) -> list[Contamination]:
        """The contaminated prompts of one batch: step-1 hits in batch order, then step-2 hits."""
        stripped = [strip_boilerplate(p) for p in prompts]
        hits = self.ngram_index.match_batch(stripped)
        rest = [k for k, h in enumerate(hits) if h is None]
        fuzzy_hits = self.fuzzy_index.match_batch([stripped[k] for k in rest], workers=self.fuzzy_workers)
        found: list[tuple[int, Contamination]] = []
        for k, h in enumerate(hits):
            if h is not None:
                found.append((k, Contamination(ids[k], "ngram", h.eval_set, h.item_id, h.ngram)))
        for k, fh in zip(rest, fuzzy_hits):
            if fh is not None:
                item = self.items[self.fuzzy_owner[fh.eval_index]]
                found.append((k, Contamination(ids[k], "fuzzy", item.eval_set, item.item_id, f"{fh.score:.1f}")))
        st = self.stats
        st.rows += len(prompts)
        for k, c in found:
            st.by_step[c.step] += 1
            st.by_eval_set[c.eval_set] += 1
            if len(st.examples) < self.max_examples:
                st.examples.append((c.step, c.eval_set, prompts[k], c.evidence))
        return [c for _, c in found]


@dataclass(frozen=True)
class ContaminationRate:
    rows: int
    contaminated: int
    examples: tuple[str, ...]  # ids of the first contaminated rows

    @property
    def rate(self) -> float:
        return round(self.contaminated / self.rows, 6) if self.rows else 0.0


def contamination_rate(index: NgramIndex, batches: Iterable[Sequence[tuple[str, str]]],
                       max_examples: int = 5) -> ContaminationRate:
    """Re-run the n-gram step over stored rows, given as batches of (id, prompt)."""
    total, bad, examples = 0, 0, []
    for batch in batches:
        total += len(batch)
        hits = index.match_batch([strip_boilerplate(prompt) for _, prompt in batch])
        for (rid, _), h in zip(batch, hits):
            if h is not None:
                bad += 1
                if len(examples) < max_examples:
                    examples.append(rid)
    return ContaminationRate(total, bad, tuple(examples))
