"""Input-token counters for the spend plan: a model's own tokenizer where one is available offline.

    counter = gguf_counter(path)       # llama.cpp: the GGUF's vocabulary and chat template, as the engine counts
    counter.count(messages)            # prompt tokens of one chat request

Where the model's tokenizer is not at hand (GPT-4o, Qwen on a remote fleet) the plan uses the stated
chars-per-token estimate of core.spend (`CharsPerToken`).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from iimed_assets.core.spend import Messages, _turns

_LOCK = threading.Lock()


class GGUFTokenCounter:
    """Counts like llama-cpp-python's chat completion: the GGUF's chat template renders the messages (with the
    generation prompt), then the vocabulary tokenizes the text with special tokens (vocab only: no weights)."""

    def __init__(self, path: str):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = path
        with _LOCK:
            self._llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        template = self._llm.metadata.get("tokenizer.chat_template")
        model = self._llm._model
        self._format = Jinja2ChatFormatter(template=template, eos_token=model.token_get_text(self._llm.token_eos()),
                                           bos_token=model.token_get_text(self._llm.token_bos())) if template else None
        self.name = f"tokenizer: {Path(path).name} (llama.cpp vocabulary + chat template)"

    def count(self, messages: Messages) -> int:
        dicts = [{"role": r, "content": c} for r, c in _turns(messages)]
        if self._format is not None:
            text = self._format(messages=dicts).prompt
        else:
            text = "\n".join(f"{d['role']}: {d['content']}" for d in dicts)
        return len(self._llm.tokenize(text.encode("utf-8"), special=True))


@lru_cache(maxsize=4)
def gguf_counter(path: str) -> Any:
    return GGUFTokenCounter(path)
