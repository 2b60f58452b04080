"""The vLLM offline engine on a GPU box (the `gpu` extra): n samples per prompt in one SamplingParams, prefix
caching on, requests fed in chunks. Constrained answers use vLLM's structured outputs
(`SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`, vLLM >= 0.12; the older
`guided_decoding=GuidedDecodingParams(json=...)` before that).

Written against vLLM 0.33's documented API and NOT run here (no GPU on the build machine); the GPU test in
test_llm.py runs it where vllm is installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import ChatRequest, Completion, UsageStats, sample_seed
from iimed_assets.resources.llm.base import LLMResource, OnDone, WorkItem


class VLLMOfflineLLM(LLMResource):
    """The vLLM offline engine (GPU). Loads once per step; n samples per prompt in one SamplingParams."""

    model: str = Field(description="HF model id or local path, e.g. Qwen/Qwen3-235B-A22B")
    tensor_parallel_size: int = Field(default=1)
    data_parallel_size: int = Field(default=1)
    gpu_memory_utilization: float = Field(default=0.90)
    max_model_len: int | None = Field(default=None)
    dtype: str = Field(default="auto")
    max_num_seqs: int | None = Field(default=None, description="vLLM scheduler batch size")
    enable_prefix_caching: bool = Field(default=True, description="the n samples of a prompt share its KV cache")
    chunk_requests: int = Field(default=2048, description="requests fed to the engine per call")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more vllm.LLM arguments, e.g. {\"reasoning_parser\": \"qwen3\"} so a "
                                          "reasoning model thinks before its structured answer")

    _engine: Any = PrivateAttr(default=None)

    def parallel_requests(self) -> int:
        return self.chunk_requests  # the engine batches a whole chunk: a send batch holds several chunks

    @property
    def model_id(self) -> str:
        return f"vllm:{self.model}"

    @property
    def backend(self) -> str:
        return "vllm"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensor_parallel_size": self.tensor_parallel_size,
                "data_parallel_size": self.data_parallel_size}

    def engine(self) -> Any:
        if self._engine is None:
            try:
                import vllm
            except ImportError as exc:
                raise RuntimeError(
                    "the vLLM offline engine needs the `gpu` extra: pip install -e '.[gpu]' (on a CUDA machine)"
                ) from exc
            kwargs: dict[str, Any] = {"model": self.model, "tensor_parallel_size": self.tensor_parallel_size,
                                      "gpu_memory_utilization": self.gpu_memory_utilization, "dtype": self.dtype,
                                      "enable_prefix_caching": self.enable_prefix_caching}
            if self.max_model_len:
                kwargs["max_model_len"] = self.max_model_len
            if self.max_num_seqs:
                kwargs["max_num_seqs"] = self.max_num_seqs
            if self.data_parallel_size > 1:
                kwargs["data_parallel_size"] = self.data_parallel_size
            self._engine = vllm.LLM(**{**kwargs, **self.engine_kwargs})
        return self._engine

    def sampling_params(self, w: WorkItem) -> Any:
        from vllm import SamplingParams

        req = w.request
        params: dict[str, Any] = {"n": len(w.sample_indices), "temperature": req.temperature, "top_p": req.top_p,
                                  "max_tokens": self.budget(req.max_tokens), "stop": list(req.stop) or None,
                                  "seed": sample_seed(req.seed, w.sample_indices[0])}
        if req.output is not None:
            params.update(_structured(req))
        return SamplingParams(**params)

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        engine = self.engine()
        for start in range(0, len(work), self.chunk_requests):
            chunk = work[start:start + self.chunk_requests]
            stats.requests += len(chunk)
            outputs = engine.chat([w.request.message_dicts() for w in chunk], [self.sampling_params(w) for w in chunk],
                                  use_tqdm=False)
            for w, out in zip(chunk, outputs):
                prompt_tokens = len(out.prompt_token_ids or [])
                for k, (si, o) in enumerate(zip(w.sample_indices, out.outputs)):
                    on_done(w.index, si, Completion.answered(o.text, o.finish_reason,
                                                             prompt_tokens if k == 0 else 0, len(o.token_ids)))


def _structured(req: ChatRequest) -> dict[str, Any]:
    """The SamplingParams field that enforces the request's JSON schema, for the installed vLLM."""
    schema = req.output.schema if req.output else None
    try:  # vLLM >= 0.12 (the guided_* names were removed there)
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
