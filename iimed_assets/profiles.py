"""Recipe profiles: one switch sets the three model roles and the recipe's parameters for the whole graph.

    IIMED_PROFILE=laptop   (default) the embedded models, sized for a 2-core laptop with no GPU and no network
    IIMED_PROFILE=card     the published II-Medical-Reasoning-SFT recipe (a vLLM fleet + an OpenAI judge)

`iimed-assets materialize|dev --profile card` sets the variable. The profile is resolved once, when the code
location loads (`active_profile()`), and becomes:
  - the `generator`, `classifier` and `judge` resources (`resources/defaults.py`); every role setting can be
    overridden on its own with `IIMED_<ROLE>_<SETTING>` (see `resources/llm/config.py`);
  - the defaults of every stage config (`qa_samples.n`, `instruct_judged.threshold`, ...): in the launchpad,
    or with `iimed-assets materialize --set qa_samples.n=6`, any one of them can be overridden;
  - what the UI shows: the profile and the roles in every asset's definition metadata, the job descriptions,
    and each model stage's materialization metadata.

Pure Python: no Dagster import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

ENV_PROFILE = "IIMED_PROFILE"
DEFAULT_PROFILE = "laptop"
ROLES = ("generator", "classifier", "judge")
KEEP_RULES = ("shortest", "all_correct", "up_to_k")


@dataclass(frozen=True)
class Role:
    """One model role: which backend, which model, where, and its budget."""

    backend: str                      # llamacpp | openai | vllm | embedding (classifier only)
    model: str | None = None          # llamacpp: a GGUF path (None: SmolLM2-135M); embedding: a model folder
    base_url: str | None = None       # openai: one URL or a comma-separated fleet
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int | None = None     # the role's budget for every request; None: each stage's own
    max_concurrency: int = 32
    tensor_parallel: int = 1
    usd_per_1m_prompt: float = 0.0
    usd_per_1m_completion: float = 0.0

    def summary(self) -> str:
        where = f" @ {self.base_url}" if self.base_url else ""
        return f"{self.backend}:{self.model or 'default'}{where}"


@dataclass(frozen=True)
class Profile:
    """Everything a profile sets. Field names are what `Profile.override` and the README table use."""

    name: str
    description: str
    generator: Role
    classifier: Role
    judge: Role
    # section 2: rejection sampling
    qa_n: int
    qa_temperature: float
    qa_top_p: float
    qa_max_tokens: int
    qa_keep: str                      # shortest | all_correct | up_to_k
    qa_keep_k: int                    # for up_to_k
    verify_max_tokens: int            # the judge's free-form verification
    verify_rationale_chars: int       # 0: the verdict only
    # section 3: the R1 domain filter
    kmeans_k: int | None              # None: about 40 prompts per cluster (r1_clusters' rule)
    domain_voters: int
    per_prompt_budget: float          # 0: the recipe's pure cluster-majority vote
    domain_max_tokens: int
    # section 4: judged instructions
    instruct_max_tokens: int
    judge_threshold: float
    judge_max_tokens: int
    judge_rationale_chars: int        # 0: the score only
    # cleaning (the card's values; the cleaning stages' own defaults are the same)
    dedup_ngram: int = 4
    dedup_jaccard: float = 0.7
    decontam_ngram: int = 8
    fuzzy_threshold: float = 80.0

    def role(self, name: str) -> Role:
        if name not in ROLES:
            raise ValueError(f"unknown role {name!r}; roles: {ROLES}")
        return getattr(self, name)

    def override(self, **values: Any) -> "Profile":
        """The same profile with some values replaced (names as the fields); unknown names fail loudly."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown profile settings {unknown}; known: {sorted(known)}")
        return replace(self, **values)

    def settings(self) -> dict[str, Any]:
        """Every value, roles as one-line summaries (the UI and the README table)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.summary() if isinstance(value, Role) else value
        return out


LAPTOP = Profile(
    name="laptop",
    description="embedded models on a CPU laptop, offline: SmolLM2-135M (llama.cpp) generates and judges with "
                "grammar-constrained answers, MiniLM nearest exemplars label domains",
    generator=Role("llamacpp"),
    classifier=Role("embedding"),
    judge=Role("llamacpp"),
    qa_n=2, qa_temperature=0.7, qa_top_p=0.95, qa_max_tokens=320, qa_keep="shortest", qa_keep_k=1,
    verify_max_tokens=24, verify_rationale_chars=0,
    kmeans_k=None, domain_voters=10, per_prompt_budget=1.0, domain_max_tokens=16,
    instruct_max_tokens=192, judge_threshold=8.0, judge_max_tokens=24, judge_rationale_chars=0,
)

CARD = Profile(
    name="card",
    description="the published recipe: Qwen3-235B-A22B samples 8 responses per prompt (vLLM fleet), "
                "Qwen2.5-32B-Instruct labels clusters (K=50,000, 10 nearest, pure majority), GPT-4o judges (>= 8)",
    generator=Role("openai", "Qwen/Qwen3-235B-A22B", "http://127.0.0.1:8000/v1", max_concurrency=64),
    classifier=Role("openai", "Qwen/Qwen2.5-32B-Instruct", "http://127.0.0.1:8001/v1", max_concurrency=64),
    judge=Role("openai", "gpt-4o", "https://api.openai.com/v1", max_concurrency=32,
               usd_per_1m_prompt=2.5, usd_per_1m_completion=10.0),
    # Qwen3's recommended sampling for thinking mode; its medical reasoning runs to several thousand tokens and a
    # truncated sample is never kept, so the budget is generous.
    qa_n=8, qa_temperature=0.6, qa_top_p=0.95, qa_max_tokens=16384,
    # 873,497 samples from ~287k seed prompts (3.04 per prompt): more than one per prompt was kept, so not
    # `shortest`; `up_to_k` with k <= 3 cannot reach 3.04; the card names no cap. See the README.
    qa_keep="all_correct", qa_keep_k=8,
    verify_max_tokens=512, verify_rationale_chars=400,
    kmeans_k=50_000, domain_voters=10, per_prompt_budget=0.0, domain_max_tokens=64,
    instruct_max_tokens=8192, judge_threshold=8.0, judge_max_tokens=512, judge_rationale_chars=600,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LAPTOP, CARD)}


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"{ENV_PROFILE}={name!r} is not a profile; profiles: {sorted(PROFILES)}") from None


def active_profile(env: Mapping[str, str] | None = None) -> Profile:
    """The profile in force: $IIMED_PROFILE (default laptop)."""
    from iimed_assets import settings

    return profile_named(settings.value(ENV_PROFILE, env) or DEFAULT_PROFILE)
