"""Pick each LLM resource's backend from the environment, so the same graph runs on a laptop
(embedded SmolLM2), against a vLLM/SGLang server or OpenAI, or on a GPU box with the vLLM engine.

    IIMED_LLM_BACKEND=llamacpp|openai|vllm      (generation: `llm`)
    IIMED_JUDGE_BACKEND=llamacpp|openai|vllm    (the judge: `judge`)
    <PREFIX>_MODEL, <PREFIX>_BASE_URL (comma-separated: a fleet), <PREFIX>_API_KEY_ENV, <PREFIX>_MAX_CONCURRENCY,
    <PREFIX>_USD_PER_1M_PROMPT, <PREFIX>_USD_PER_1M_COMPLETION, <PREFIX>_TENSOR_PARALLEL
"""

from __future__ import annotations

import os

from iimed_assets.resources.llm import LlamaCppLLM, LLMResource, OpenAICompatibleLLM, VLLMOfflineLLM

BACKENDS = ("llamacpp", "openai", "vllm")


def llm_from_env(prefix: str = "IIMED_LLM", env: dict[str, str] | None = None) -> LLMResource:
    env = dict(os.environ if env is None else env)
    get = lambda key, default=None: env.get(f"{prefix}_{key}", default)  # noqa: E731
    backend = get("BACKEND", "llamacpp").lower()
    prices = {"usd_per_1m_prompt_tokens": float(get("USD_PER_1M_PROMPT", 0.0)),
              "usd_per_1m_completion_tokens": float(get("USD_PER_1M_COMPLETION", 0.0))}
    if backend == "llamacpp":
        return LlamaCppLLM(model_path=get("MODEL"), **prices)
    if backend == "openai":
        model = get("MODEL")
        if not model:
            raise ValueError(f"{prefix}_BACKEND=openai needs {prefix}_MODEL")
        # A comma-separated BASE_URL is a fleet: prompts are spread over the servers, retries fail over.
        urls = [u.strip() for u in get("BASE_URL", "http://127.0.0.1:8000/v1").split(",") if u.strip()]
        return OpenAICompatibleLLM(base_url=urls[0], base_urls=urls if len(urls) > 1 else [], model=model,
                                   api_key_env=get("API_KEY_ENV", "OPENAI_API_KEY"),
                                   max_concurrency=int(get("MAX_CONCURRENCY", 32)), **prices)
    if backend == "vllm":
        model = get("MODEL")
        if not model:
            raise ValueError(f"{prefix}_BACKEND=vllm needs {prefix}_MODEL")
        return VLLMOfflineLLM(model=model, tensor_parallel_size=int(get("TENSOR_PARALLEL", 1)), **prices)
    raise ValueError(f"{prefix}_BACKEND={backend!r} is not one of {BACKENDS}")
