"""Profiles: one switch for the roles and the recipe's parameters; each value overridable on its own; what the
UI shows; the CLI's --profile and --set."""

import json
import subprocess
import sys

import dagster as dg
import pytest

from iimed_assets.cli import parse_settings
from iimed_assets.profiles import CARD, LAPTOP, PROFILES, active_profile
from iimed_assets.runner import materialize_in_order


def test_the_switch_and_its_default():
    assert active_profile({}) is LAPTOP and active_profile({"IIMED_PROFILE": "card"}) is CARD
    assert active_profile({"IIMED_PROFILE": " Card "}) is CARD
    with pytest.raises(ValueError, match="not a profile"):
        active_profile({"IIMED_PROFILE": "gpu"})
    assert set(PROFILES) == {"laptop", "card"}


def test_card_profile_is_the_published_recipe():
    assert 6 <= CARD.qa_n <= 10 and CARD.qa_n == 8
    assert CARD.generator.model == "Qwen/Qwen3-235B-A22B" and CARD.classifier.model == "Qwen/Qwen2.5-32B-Instruct"
    assert CARD.judge.model == "gpt-4o" and CARD.judge.base_url == "https://api.openai.com/v1"
    assert (CARD.kmeans_k, CARD.domain_voters, CARD.per_prompt_budget, CARD.judge_threshold) == (50_000, 10, 0.0, 8.0)
    assert (CARD.dedup_ngram, CARD.dedup_jaccard, CARD.decontam_ngram, CARD.fuzzy_threshold) == (4, 0.7, 8, 80.0)
    assert CARD.qa_keep == "all_correct"
    # budgets fit for a reasoning generator and a judge that explains itself
    assert CARD.qa_max_tokens >= 8192 and CARD.instruct_max_tokens >= 4096 and CARD.judge_max_tokens >= 256


def test_laptop_profile_is_embedded():
    assert (LAPTOP.generator.backend, LAPTOP.classifier.backend, LAPTOP.judge.backend) == (
        "llamacpp", "embedding", "llamacpp")
    assert LAPTOP.qa_keep == "shortest" and LAPTOP.kmeans_k is None


def test_override_changes_one_value_and_rejects_unknown_names():
    six = CARD.override(qa_n=6)
    assert six.qa_n == 6 and {k: v for k, v in six.settings().items() if k != "qa_n"} == {
        k: v for k, v in CARD.settings().items() if k != "qa_n"}
    with pytest.raises(ValueError, match="unknown profile settings"):
        CARD.override(samples=6)


CARD_DEFINITIONS = """
import json, dagster as dg
from iimed_assets.definitions import defs
from iimed_assets.assets.qa import QASamplesConfig, QAVerifiedConfig
from iimed_assets.assets.instruct import InstructJudgedConfig
from iimed_assets.assets.r1 import ClusterConfig, DomainConfig
spec = defs.resolve_assets_def("instruct_judged").specs_by_key[dg.AssetKey("instruct_judged")]
print(json.dumps({
    "n": QASamplesConfig().n, "keep": QAVerifiedConfig().keep, "threshold": InstructJudgedConfig().threshold,
    "per_prompt_budget": DomainConfig().per_prompt_budget, "voters": DomainConfig().voters, "k": ClusterConfig().k,
    "profile": spec.metadata["recipe/profile"], "roles": spec.metadata["recipe/roles"].value,
    "job": defs.resolve_job_def("section4_instruct").description,
    "classifier": type(defs.resources["classifier"]).__name__,
}))
"""


@pytest.mark.parametrize("profile", ["card", "laptop"])
def test_the_profile_sets_stage_defaults_roles_and_what_the_ui_shows(profile, monkeypatch):
    monkeypatch.setenv("IIMED_PROFILE", profile)
    monkeypatch.setenv("IIMED_JUDGE_MAX_TOKENS", "999")  # one role setting, overridden alone
    out = subprocess.run([sys.executable, "-c", CARD_DEFINITIONS], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    p = PROFILES[profile]
    assert (got["n"], got["keep"], got["threshold"]) == (p.qa_n, p.qa_keep, p.judge_threshold)
    assert (got["per_prompt_budget"], got["voters"], got["k"]) == (p.per_prompt_budget, p.domain_voters, p.kmeans_k)
    assert got["profile"].startswith(f"{profile}: ") and got["job"].endswith(f"Profile: {profile}.")
    assert set(got["roles"]) == {"generator", "classifier", "judge"} and got["roles"]["judge"]["max_tokens"] == 999
    assert got["classifier"] == ("EmbeddingClassifier" if profile == "laptop" else "OpenAICompatibleLLM")
    if profile == "card":
        assert got["roles"]["generator"]["model"] == "openai-compatible:Qwen/Qwen3-235B-A22B"


def test_cli_settings_parse_to_run_config_values():
    assert parse_settings(["qa_samples.n=6", "qa_verified.keep=up_to_k", "qa_verified.keep_k=3",
                           "instruct_judged.threshold=7.5"]) == {
        "qa_samples": {"n": 6}, "qa_verified": {"keep": "up_to_k", "keep_k": 3}, "instruct_judged": {"threshold": 7.5}}
    for bad in ["n=6", "qa_samples.n", ".n=1"]:
        with pytest.raises(ValueError, match="asset.field=value"):
            parse_settings([bad])


def test_runner_applies_one_override_and_keeps_the_other_defaults(tmp_path):
    class Knobs(dg.Config):
        n: int = 2
        keep: str = "shortest"

    seen = {}

    @dg.asset
    def knobs(config: Knobs) -> None:
        seen.update(config.model_dump())

    with dg.instance_for_test() as instance:
        [outcome] = materialize_in_order([knobs], instance=instance, resources={}, log=lambda _: None,
                                         config={"knobs": {"n": 8}})
    assert outcome.status == "ok" and seen == {"n": 8, "keep": "shortest"}
