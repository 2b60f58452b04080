"""Sentence embeddings that keep the device busy: cut, length-sorted, pre-tokenised batches.

The recipe embeds every R1 prompt with all-MiniLM-L6-v2 (a BERT encoder, 256 tokens at most). What
`SentenceTransformer.encode` does per call: sort by length, then per batch tokenise (on the calling thread),
forward, copy back. On a GPU the forward pass of a 512-prompt batch takes a few milliseconds and the
tokeniser becomes the bottleneck, for two reasons this module removes:

1. **Long prompts are tokenised whole, then truncated.** R1 prompts run to thousands of characters; only the
   first 254 word pieces count. `cut_for_tokenizer` cuts a text at a whitespace boundary after
   `max_tokens * CHARS_PER_TOKEN_CUT` characters. A BERT-style tokeniser splits words at whitespace, so the
   pieces of the kept words are exactly the first pieces of the whole text; when the cut text still fills the
   window, its truncated ids equal the full text's. When it does not (a text of unusually long words), that
   text is tokenised again in full. The result is identical to tokenising whole texts (tested).
2. **Python work around the tokeniser.** `SentenceTransformer.encode` tokenises through transformers, whose
   per-call Python work holds the GIL; on an H200 machine that capped it at ~4,000 prompts/s with 16 idle cores.
   `RustTokenizer` calls the same tokeniser through `tokenizers` directly (Rust threads, GIL released), checked
   against the model's own preprocessing on probe texts at start.
3. **Tokenising waits for the forward pass and vice versa.** Batches are tokenised ahead on a worker thread
   while the device runs the previous batch.

Texts are sorted by (cut) length over the whole input, not per chunk, so batches carry little padding.
Pure torch + sentence-transformers: no Dagster (the `Embedder` resource wraps this).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

CHARS_PER_TOKEN_CUT = 8  # characters kept per token of the window before looking for a whitespace to cut at
_CUT_SPACES = " \n\t"  # whitespace that every BERT normaliser treats as a word boundary (not \x1c-\x1f)
_CUT_LOOKAHEAD = 200  # how far past the cut point to look for a whitespace; none found: no cut


def cut_for_tokenizer(text: str, max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN_CUT) -> tuple[str, bool]:
    """The text cut at a whitespace after about `max_tokens * chars_per_token` characters, and whether it was
    cut. Texts with no whitespace near the cut point (e.g. CJK) are kept whole."""
    limit = max_tokens * chars_per_token
    if len(text) <= limit:
        return text, False
    window = text[limit:limit + _CUT_LOOKAHEAD]
    for i, ch in enumerate(window):
        if ch in _CUT_SPACES:
            return text[:limit + i], True
    return text, False


def _preprocess_fn(model: Any) -> Callable[[list[str]], dict]:
    # sentence-transformers 6 renamed `tokenize` to `preprocess` (the old name warns); 3-5 have `tokenize`.
    return getattr(model, "preprocess", None) or model.tokenize


_PROBES = ("  Leading and trailing spaces  ", "A 45-year-old man presents with chest pain.\n\nWhich drug? A. x B. y",
           "Ünïcödé ÀÉÎ façade naïve", "患者男性，45岁，胸痛。", "x" * 40 + " short", "word " * 400, "")


class RustTokenizer:
    """The model's fast tokeniser called through `tokenizers` directly: `encode_batch` runs in Rust on all cores
    with the GIL released, without transformers' per-call Python work (measured on an H200 machine: that Python
    work, not the tokenising, held sentence-transformers at ~4,000 prompts/s). Built only when its output equals
    the model's own `preprocess` on probe texts; otherwise `for_model` returns None and the model's is used."""

    def __init__(self, model: Any):
        from tokenizers import Tokenizer

        first = model[0]
        hf = first.tokenizer
        self.tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=_max_tokens(model))
        self.tokenizer.enable_padding(pad_id=hf.pad_token_id, pad_token=hf.pad_token,
                                      pad_type_id=getattr(hf, "pad_token_type_id", 0))
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here reads
        self._encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        self.names = list(hf.model_input_names)
        self.lower = bool(getattr(first, "do_lower_case", False))
        self.extra: dict = {}

    def __call__(self, texts: Sequence[str]) -> dict:
        import torch

        texts = [t.strip() for t in texts]
        if self.lower:
            texts = [t.lower() for t in texts]
        encs = self._encode_batch(texts)
        out = {"input_ids": torch.from_numpy(np.array([e.ids for e in encs], dtype=np.int64))}
        if "token_type_ids" in self.names:
            out["token_type_ids"] = torch.from_numpy(np.array([e.type_ids for e in encs], dtype=np.int64))
        if "attention_mask" in self.names:
            out["attention_mask"] = torch.from_numpy(np.array([e.attention_mask for e in encs], dtype=np.int64))
        return {**out, **self.extra}

    @classmethod
    def for_model(cls, model: Any) -> "RustTokenizer | None":
        import torch

        try:
            fast = cls(model)
        except Exception:  # not a fast tokeniser, not a Transformer first module, another library version
            return None
        reference = _preprocess_fn(model)(list(_PROBES))
        fast.extra = {k: v for k, v in reference.items() if not torch.is_tensor(v)}
        ours = fast(list(_PROBES))
        same = set(ours) == set(reference) and all(
            torch.equal(ours[k], reference[k].to(ours[k].dtype)) for k in ours if torch.is_tensor(ours[k]))
        return fast if same else None


def _max_tokens(model: Any) -> int:
    return int(getattr(model, "max_seq_length", None) or 512)


class _Batch:
    """One tokenised batch: positions in the input, features on the host."""

    __slots__ = ("positions", "features")

    def __init__(self, positions: np.ndarray, features: dict):
        self.positions, self.features = positions, features


def _prepare(tokenize: Callable[[list[str]], dict], max_tokens: int, texts: Sequence[str], positions: np.ndarray,
             cut: Sequence[str], was_cut: np.ndarray, pin: bool) -> _Batch:
    features = tokenize([cut[i] for i in positions])
    short = was_cut[positions] & (features["attention_mask"].sum(1).numpy() < max_tokens)
    if short.any():  # a cut text that no longer fills the window: tokenise the batch from the whole texts
        features = tokenize([texts[i] if was_cut[i] else cut[i] for i in positions])
    if pin:
        features = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in features.items()}
    return _Batch(positions, features)


def encode(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: str,
    precision: str,
    workers: int = 1,
    prefetch: int = 4,
    progress: Callable[[int, int, float], None] | None = None,
    progress_every: int = 4096,
    fast_tokenizer: bool = True,
) -> np.ndarray:
    """L2-normalised float32 embeddings of `texts` (input order) with a sentence-transformers `model`.

    `precision`: fp16 (the model's weights are already half), bf16 (autocast), fp32. `workers` threads
    tokenise up to `prefetch` batches ahead of the forward pass (0: tokenise inline, on this thread).
    `fast_tokenizer`: call the Rust tokeniser directly (`RustTokenizer`) when it matches the model's own."""
    import torch

    n = len(texts)
    dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
              else model.get_sentence_embedding_dimension())
    if n == 0:
        return np.zeros((0, dim), np.float32)
    max_tokens = _max_tokens(model)
    tokenize = (RustTokenizer.for_model(model) if fast_tokenizer else None) or _preprocess_fn(model)
    cut: list[str] = []
    was_cut = np.zeros(n, bool)
    for i, text in enumerate(texts):
        c, w = cut_for_tokenizer(text, max_tokens)
        cut.append(c)
        was_cut[i] = w
    order = np.argsort(-np.fromiter((len(c) for c in cut), np.int64, n), kind="stable")
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    on_cuda = device.startswith("cuda")
    out = torch.empty((n, dim), dtype=torch.float32, device=device)
    autocast = (torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    started = time.perf_counter()
    done = reported = 0

    def prepared():
        if workers <= 0:
            for positions in batches:
                yield _prepare(tokenize, max_tokens, texts, positions, cut, was_cut, False)
            return
        # The first batch is tokenised here: transformers sets the tokeniser's truncation/padding state on its
        # first call (a mutation that must not race with a worker's encode), later calls only read it.
        yield _prepare(tokenize, max_tokens, texts, batches[0], cut, was_cut, False)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize") as pool:
            pending = []
            for positions in batches[1:]:
                pending.append(pool.submit(_prepare, tokenize, max_tokens, texts, positions, cut, was_cut, on_cuda))
                if len(pending) > prefetch:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()

    with torch.inference_mode(), autocast:
        for batch in prepared():
            features = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v
                        for k, v in batch.features.items()}
            emb = model(features)["sentence_embedding"]
            out[torch.from_numpy(batch.positions).to(device)] = emb.float()
            done += len(batch.positions)
            if progress and (done - reported >= progress_every or done == n):
                reported = done
                progress(done, n, time.perf_counter() - started)
        out = torch.nn.functional.normalize(out, dim=1)
    return out.cpu().numpy()
