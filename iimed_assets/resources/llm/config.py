"""Build a role's resource from the profile's `Role`, with each setting overridable from the environment.

    IIMED_<ROLE>_BACKEND=llamacpp|openai|openai_batch|vllm|embedding      ROLE = GENERATOR | CLASSIFIER | JUDGE
    IIMED_<ROLE>_MODEL, _BASE_URL (comma-separated: a fleet), _API_KEY_ENV (the *name* of the variable holding
    the key), _MAX_CONCURRENCY, _MAX_TOKENS, _TENSOR_PARALLEL, _USD_PER_1M_PROMPT, _USD_PER_1M_COMPLETION,
    _STRUCTURED_OUTPUTS (0/1), _THREADS (llamacpp), _MAX_USD_STAGE, _MAX_USD_RUN (budget caps; or for every role
    IIMED_MAX_USD_STAGE, IIMED_MAX_USD_RUN)

This is the one place where the roles read the environment; it runs when the definitions are built.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from iimed_assets import settings
from iimed_assets.profiles import Role
from iimed_assets.resources.llm.base import RoleResource
from iimed_assets.resources.llm.embedding_classifier import EmbeddingClassifier
from iimed_assets.resources.llm.llamacpp import LlamaCppLLM
from iimed_assets.resources.llm.openai_batch import OpenAIBatchLLM
from iimed_assets.resources.llm.openai_compatible import OpenAICompatibleLLM
from iimed_assets.resources.llm.vllm_offline import VLLMOfflineLLM

BACKENDS = ("llamacpp", "openai", "openai_batch", "vllm", "embedding")


# Backends that name models the same way: the OpenAI API, synchronous or through its Batch API (the card's judge
# becomes a batch judge with IIMED_JUDGE_BACKEND=openai_batch alone, still gpt-4o at api.openai.com).
_MODEL_FAMILY = {"openai": "openai-api", "openai_batch": "openai-api"}


def env_prefix(role: str) -> str:
    return f"IIMED_{role.upper()}"


def role_with_env(role: str, spec: Role, env: Mapping[str, str] | None = None) -> Role:
    """The profile's role with every `IIMED_<ROLE>_*` variable that is set applied on top."""
    prefix = env_prefix(role)

    def get(key: str) -> str | None:
        return settings.value(f"{prefix}_{key}", env)

    changes: dict = {}
    for key, field, cast in (("BACKEND", "backend", str.lower), ("MODEL", "model", str), ("BASE_URL", "base_url", str),
                             ("API_KEY_ENV", "api_key_env", str), ("MAX_CONCURRENCY", "max_concurrency", int),
                             ("MAX_TOKENS", "max_tokens", int), ("TENSOR_PARALLEL", "tensor_parallel", int),
                             ("USD_PER_1M_PROMPT", "usd_per_1m_prompt", float),
                             ("USD_PER_1M_COMPLETION", "usd_per_1m_completion", float)):
        value = get(key)
        if value is not None:
            changes[field] = cast(value)
    if "backend" in changes and "model" not in changes and \
            _MODEL_FAMILY.get(changes["backend"], changes["backend"]) != _MODEL_FAMILY.get(spec.backend, spec.backend):
        changes["model"] = None  # another kind of backend: the profile's model name does not carry over
    return replace(spec, **changes)


def spend_caps(role: str, env: Mapping[str, str]) -> dict[str, float]:
    """`max_usd_stage` / `max_usd_run` from IIMED_<ROLE>_MAX_USD_STAGE|RUN, else IIMED_MAX_USD_STAGE|RUN."""
    out: dict[str, float] = {}
    for scope in ("STAGE", "RUN"):
        value = (settings.value(f"{env_prefix(role)}_MAX_USD_{scope}", env)
                 or settings.value(f"IIMED_MAX_USD_{scope}", env))
        if value not in (None, ""):
            out[f"max_usd_{scope.lower()}"] = float(value)
    return out


def role_resource(role: str, spec: Role, env: Mapping[str, str] | None = None) -> RoleResource:
    """The resource for one role of the profile, environment overrides applied."""
    spec = role_with_env(role, spec, env)
    prefix = env_prefix(role)
    prices = {"usd_per_1m_prompt_tokens": spec.usd_per_1m_prompt,
              "usd_per_1m_completion_tokens": spec.usd_per_1m_completion}
    prices.update(spend_caps(role, env))
    structured = settings.value(f"{prefix}_STRUCTURED_OUTPUTS", env)
    llm_common = {**prices, "max_tokens": spec.max_tokens,
                  **({"structured_outputs": structured not in ("0", "false", "no")} if structured else {})}
    if spec.backend == "llamacpp":
        threads = settings.value(f"{prefix}_THREADS", env)
        return LlamaCppLLM(model_path=spec.model, n_threads=int(threads) if threads else None, **llm_common)
    if spec.backend == "openai":
        if not spec.model:
            raise ValueError(f"{prefix}_BACKEND=openai needs {prefix}_MODEL")
        # A comma-separated BASE_URL is a fleet: prompts are spread over the servers, retries fail over.
        urls = [u.strip() for u in (spec.base_url or "http://127.0.0.1:8000/v1").split(",") if u.strip()]
        return OpenAICompatibleLLM(base_url=urls[0], base_urls=urls if len(urls) > 1 else [], model=spec.model,
                                   api_key_env=spec.api_key_env, max_concurrency=spec.max_concurrency, **llm_common)
    if spec.backend == "openai_batch":
        if not spec.model:
            raise ValueError(f"{prefix}_BACKEND=openai_batch needs {prefix}_MODEL")
        return OpenAIBatchLLM(base_url=(spec.base_url or "https://api.openai.com/v1").split(",")[0].strip(),
                              model=spec.model, api_key_env=spec.api_key_env, **llm_common)
    if spec.backend == "vllm":
        if not spec.model:
            raise ValueError(f"{prefix}_BACKEND=vllm needs {prefix}_MODEL")
        return VLLMOfflineLLM(model=spec.model, tensor_parallel_size=spec.tensor_parallel, **llm_common)
    if spec.backend == "embedding":
        if role != "classifier":
            raise ValueError(f"{prefix}_BACKEND=embedding: an embedding model can only be the classifier")
        return EmbeddingClassifier(model_path=spec.model, **prices)
    raise ValueError(f"{prefix}_BACKEND={spec.backend!r} is not one of {BACKENDS}")
