"""Model backends behind one protocol, with a DuckDB request cache, resume, retries and accounting.

    completions, stats = generator.generate(requests, cache=warehouse, log=context.log.info)

Modules: `base` (the role resources' shared loop, constrained answers with a free-text fallback, metadata),
`cache` (RequestCache: the `llm_cache` table), one module per backend — `openai_compatible` (vLLM / SGLang
servers and OpenAI), `llamacpp` (an embedded GGUF model on CPU), `vllm_offline` (the vLLM engine on a GPU box),
`openai_batch` (the OpenAI Batch API: files + batches, half price), `embedding_classifier` (MiniLM nearest
exemplars, a classifier only) — and `config` (a role's resource from the
profile and the environment).
"""

from iimed_assets.resources.llm.base import (
    Answers,
    LabelResult,
    LLMResource,
    RoleResource,
    WorkItem,
    usage_metadata,
)
from iimed_assets.resources.llm.cache import CACHE_TABLE, RequestCache
from iimed_assets.resources.llm.config import role_resource, role_with_env
from iimed_assets.resources.llm.embedding_classifier import EmbeddingClassifier
from iimed_assets.resources.llm.llamacpp import LlamaCppLLM, default_gguf_path
from iimed_assets.resources.llm.openai_batch import OpenAIBatchLLM
from iimed_assets.resources.llm.openai_compatible import OpenAICompatibleLLM
from iimed_assets.resources.llm.vllm_offline import VLLMOfflineLLM

__all__ = [
    "Answers", "CACHE_TABLE", "EmbeddingClassifier", "LLMResource", "LabelResult", "LlamaCppLLM",
    "OpenAIBatchLLM", "OpenAICompatibleLLM", "RequestCache", "RoleResource", "VLLMOfflineLLM", "WorkItem", "default_gguf_path",
    "role_resource", "role_with_env", "usage_metadata",
]
