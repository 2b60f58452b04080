"""The run explains itself (issue 18): the funnel (pure, and on the bundled sample against the stage tables and the
ledger), stage records (per partition, settings hash, reruns named), licences and languages, the card's Hub YAML
(parsed by huggingface_hub), the build's identity, and `iimed-assets report`."""

from datetime import datetime

import pytest
from huggingface_hub import DatasetCard

from iimed_assets import provenance
from iimed_assets.core import card, funnel, licences, report, runs
from iimed_assets.core.funnel import StageCounts
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.sources import registry

# ---- stage records --------------------------------------------------------------------------------------------


def _run(asset, partition, seq, **params) -> runs.StageRun:
    return runs.StageRun(asset, partition, f"run{seq}", runs.settings_hash(params), params, {"prompt_tokens": 10},
                         datetime(2025, 1, 1, 12, seq), seq)


def test_settings_hash_is_canonical():
    assert runs.settings_hash({"a": 1, "b": {"c": 2}}) == runs.settings_hash({"b": {"c": 2}, "a": 1})
    assert runs.settings_hash({"a": 1}) != runs.settings_hash({"a": 2})


def test_stage_settings_group_partitions_and_name_a_rerun_with_other_settings():
    history = [_run("qa_samples", "medqa", 1, n=2, model="m"), _run("qa_samples", "medmcqa", 2, n=2, model="m"),
               _run("qa_samples", "pubmedqa", 3, n=2, model="m"),
               _run("qa_samples", "medqa", 4, n=3, model="m"),       # rerun with other settings
               _run("qa_samples", "medmcqa", 5, n=2, model="m"),     # rerun with the same settings: not flagged
               _run("sft_deduped", "all", 6, threshold=0.7)]
    st = runs.stage_settings(history)
    qa = st["qa_samples"]
    assert qa.mixed and qa.differing_keys() == ["n"]
    assert [(g.params["n"], g.partitions) for g in qa.groups] == [(2, ("medmcqa", "pubmedqa")), (3, ("medqa",))]
    assert [(s.partition, s.earlier.params["n"], s.current.params["n"]) for s in qa.superseded] == [("medqa", 2, 3)]
    assert not st["sft_deduped"].mixed and not st["sft_deduped"].superseded
    lines = "\n".join(card.stage_lines(card.CardInputs(name="x", build="b", by_section=(), files={}, stages=st)))
    assert "different settings" in lines and "`n`" in lines
    assert "n=2 (settings" in lines and "n=3 (settings" in lines and "`medqa`" in lines
    assert "qa_samples[medqa]` was rerun with other settings: now n=3" in lines and "replacing n=2" in lines
    assert "no stage record" in lines  # stages that did not run are named


def test_stage_runs_keep_history_per_partition_and_migrate_the_old_table(tmp_path):
    wh = Warehouse(path=str(tmp_path / "wh.duckdb"))
    with wh.connect() as con:  # a warehouse written before stage_runs kept history
        con.execute("CREATE TABLE stage_runs (asset VARCHAR PRIMARY KEY, run_id VARCHAR, params JSON, stats JSON, "
                    "recorded_at TIMESTAMP DEFAULT current_timestamp)")
        con.execute("""INSERT INTO stage_runs (asset, run_id, params, stats) VALUES
                       ('sft_decontaminated', 'old', '{"ngram": 8}', '{"eval_items": 5}')""")
    assert wh.stage_record("sft_decontaminated") == ({"ngram": 8}, {"eval_items": 5})
    h1 = wh.record_stage("qa_samples", "r1", {"n": 2}, {"rows": 1}, partition="medqa")
    h2 = wh.record_stage("qa_samples", "r2", {"n": 3}, {"rows": 2}, partition="medqa")
    wh.record_stage("qa_samples", "r3", {"n": 2}, {"rows": 4}, partition="medmcqa")
    assert h1 != h2 and wh.stage_record("qa_samples", "medqa") == ({"n": 3}, {"rows": 2})
    history = wh.stage_history(["qa_samples"])
    assert [(r.partition, r.run_id, r.settings_hash) for r in history] == [
        ("medqa", "r1", h1), ("medqa", "r2", h2), ("medmcqa", "r3", h1)]
    assert [r.asset for r in wh.stage_history()][:1] == ["sft_decontaminated"]  # the migrated row, first


# ---- licences and languages -----------------------------------------------------------------------------------

def test_every_registry_licence_is_classified():
    got = {s.name: licences.classify(s.licence) for s in registry.SOURCES}
    assert got["r1_distill_sft"].hub_id == "cc-by-nc-sa-4.0"
    assert got["r1_distill_sft"].restriction == licences.NON_COMMERCIAL_SHARE_ALIKE
    assert got["healthcaremagic"].restriction == licences.RESEARCH_ONLY
    assert got["am_qwen3_instruction_following"].restriction == licences.RESEARCH_ONLY
    assert got["m23k"].restriction == licences.NOT_STATED  # "not stated on the card (m1 code: Apache-2.0)"
    assert got["medqa"].hub_id == "mit" and got["medmcqa"].hub_id == "apache-2.0"
    assert got["nemotron_science"].hub_id == "cc-by-4.0" and got["evol_instruct_medical"].restriction == licences.NOT_PUBLIC
    # every text the registry uses maps to a restriction by a rule, not by the fallback
    assert [name for name, lic in got.items() if not lic.recognised] == []
    assert not licences.classify("WTFPL-ish").recognised


def test_card_licence_is_one_identifier_only_when_every_contributing_source_shares_it():
    single = licences.card_licence([("a", "MIT"), ("b", "MIT (MedQA GitHub)")])
    assert (single.license, single.license_name) == ("mit", None)
    mixed = licences.card_licence([("medmcqa", "Apache-2.0"), ("r1_distill_sft", "CC BY-NC-SA 4.0"),
                                   ("healthcaremagic", "not stated on the hub; ChatDoctor: academic research only")])
    assert (mixed.license, mixed.license_name) == ("other", "mixed-source-licences")
    # the most restrictive terms come first and name their sources
    assert [r for r, _ in mixed.restrictive] == [licences.RESEARCH_ONLY, licences.NON_COMMERCIAL_SHARE_ALIKE]
    assert mixed.summary.index("research use only: healthcaremagic") < mixed.summary.index("r1_distill_sft")
    assert licences.languages_present([("en", 5), ("zh", 0), ("zh", 2), ("en", 1), (None, 3)]) == ["en", "zh"]


# ---- the funnel (pure) -----------------------------------------------------------------------------------------

def _counts(**kw) -> StageCounts:
    return StageCounts(materialized=True, rows_out=kw.get("out", {}), rows_written=kw.get("written", kw.get("out", {})),
                       dropped=kw.get("dropped", {}))


def test_funnel_follows_units_conserves_rows_and_keeps_sources_with_zero_rows():
    counts = {
        "qa_seed_rows": _counts(out={"medqa": 10}, dropped={"medqa": {"bad_gold_answer": 2}}),
        # 9 prompts sampled (n=2: 18 rows), 1 without a reference
        "qa_samples": _counts(out={"medqa": 9}, written={"medqa": 18}, dropped={"medqa": {"no_reference": 1}}),
        # 6 prompts kept with 8 rows (all_correct), 3 prompts without a correct sample
        "qa_verified": _counts(out={"medqa": 6}, written={"medqa": 8}, dropped={"medqa": {"no_correct_sample": 3}}),
        "sft_candidates": _counts(out={"medqa": 8}),
        "sft_deduped": _counts(out={"medqa": 7}, dropped={"medqa": {"near_duplicate": 1}}),
        "sft_decontaminated": _counts(out={"medqa": 5}, dropped={"medqa": {"contaminated_ngram": 2}}),
        "sft_final": _counts(out={"medqa": 5}),
    }
    rows = funnel.build_funnel([("qa_seed", "medqa"), ("qa_seed", "medreason")], counts)
    medqa = {r.stage: r for r in rows if r.source == "medqa"}
    assert (medqa["qa_seed_rows"].rows_in, medqa["qa_seed_rows"].rows_out) == (12, 10)  # read = written + ledger
    assert (medqa["qa_samples"].rows_in, medqa["qa_samples"].rows_out, medqa["qa_samples"].rows_written) == (10, 9, 18)
    assert (medqa["qa_verified"].rows_in, medqa["qa_verified"].rows_out) == (9, 6)       # prompts -> prompts
    assert medqa["sft_candidates"].rows_in == 8                                           # prompts -> rows
    assert all(r.unaccounted == 0 for r in medqa.values())
    assert medqa["sft_decontaminated"].dropped_by_reason == {"contaminated_ngram": 2}
    medreason = [r for r in rows if r.source == "medreason"]
    assert len(medreason) == len(funnel.stages_of("qa_seed")) and all(r.rows_in == r.rows_out == 0 for r in medreason)
    shares = funnel.where_rows_went(rows)[("qa_seed", "medqa")]
    assert sum(shares.values()) == pytest.approx(1.0) and shares["final"] == pytest.approx(10 / 12 * 9 / 10 * 6 / 9 * 7 / 8 * 5 / 7)
    (sec,) = [r for r in funnel.section_rollup(rows) if r.stage == "sft_final"]
    assert (sec.source, sec.rows_written) == ("*", 5)
    zero = report.ended_at_zero(rows)
    assert [(z[1], z[3]) for z in zero] == [("medreason", "read no rows")]
    assert funnel.funnel_plot_png(rows)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stale_stage_shows_unaccounted_rows_and_a_stage_that_has_not_run_passes_rows_on():
    counts = {"r1_trace_rows": _counts(out={"s": 10}), "r1_medical_traces": _counts(out={"s": 4},
                                                                                   dropped={"s": {"domain:math": 5}})}
    rows = {r.stage: r for r in funnel.build_funnel([("r1_traces", "s")], counts)}
    assert not rows["r1_prompt_embeddings"].materialized and rows["r1_clusters"].rows_in == 10
    assert rows["r1_medical_traces"].unaccounted == 1 and funnel.unaccounted(rows.values())[0].stage == \
        "r1_medical_traces"
    assert "not run: sft_candidates" in funnel.where_rows_went(list(rows.values()))[("r1_traces", "s")]


def test_published_vs_run_tables():
    pub = report.PublishedFigures(registry.PUBLISHED_TOTAL, registry.PUBLISHED_SECTIONS,
                                  registry.PUBLISHED_SECTIONS_1_AND_3, {"healthcaremagic": 215_647}, "the card")
    final = {("instruct", "healthcaremagic"): 2_156, ("public_reasoning", "m23k"): 100, ("r1_traces", "x"): 200}
    _, sections = report.published_vs_run_sections(final, pub)
    by = {r[0]: r for r in sections}
    assert by["4. medical instruction following"][1:] == ("1,025,903", "2,156", "0.21%")
    assert by["1 + 3 together (the card's remainder)"][1:] == ("298,341", "300", "0.101%")
    assert by["**total**"][1:] == ("2,197,741", "2,456", "0.112%")
    _, sources = report.published_vs_run_sources([("instruct", "healthcaremagic"), ("public_reasoning", "m23k")],
                                                 final, {("instruct", "healthcaremagic"): 3_000}, pub)
    assert sources == [("instruct", "healthcaremagic", "3,000", "2,156", "215,647", "1%"),
                       ("public_reasoning", "m23k", "0", "100", "—", "—")]
    text = report.text_table(["a", "n"], [("x", "1,234"), ("yy", "5")])
    assert text.splitlines()[2] == "x   1,234" and text.splitlines()[3] == "yy      5"


# ---- the card's YAML and the build's identity ------------------------------------------------------------------

def _synthetic_card(**kw) -> str:
    counts = {"public_reasoning_rows": _counts(out={"m23k": 3, "medical_r1_distill_zh": 2}),
              "sft_candidates": _counts(out={"m23k": 3, "medical_r1_distill_zh": 2}),
              "sft_deduped": _counts(out={"m23k": 3, "medical_r1_distill_zh": 2}),
              "sft_decontaminated": _counts(out={"m23k": 3, "medical_r1_distill_zh": 2}),
              "sft_final": _counts(out={"m23k": 3, "medical_r1_distill_zh": 2})}
    rows = funnel.build_funnel([("public_reasoning", "m23k"), ("public_reasoning", "medical_r1_distill_zh")], counts)
    specs = [registry.BY_NAME["m23k"], registry.BY_NAME["medical_r1_distill_zh"]]
    inputs = card.CardInputs(
        name='A "quoted": name', build="`iimed_assets` 0.1.0", by_section=[("public_reasoning", 5, 0)],
        files={"train": ["data/train-00000-of-00001.parquet"]}, funnel=rows, rollup=funnel.section_rollup(rows),
        sources=[card.SourceInfo(s.section, s.name, s.title, s.hf_id, s.licence, s.fields.language, "sample", "x")
                 for s in specs],
        languages={"m23k": {"en": 3}, "medical_r1_distill_zh": {"zh": 2}},
        published=report.PublishedFigures(registry.PUBLISHED_TOTAL, registry.PUBLISHED_SECTIONS,
                                          registry.PUBLISHED_SECTIONS_1_AND_3, {}, "the card"), **kw)
    return card.dataset_card(inputs)


def test_card_yaml_is_valid_hub_metadata_with_derived_licence_and_languages():
    text = _synthetic_card()
    data = DatasetCard(text).data.to_dict()
    assert data["license"] == "other" and data["license_name"] == "mixed-source-licences"
    assert "licence not stated" in data["license_details"] and "m23k" in data["license_details"]
    assert data["language"] == ["en", "zh"] and data["pretty_name"] == 'A "quoted": name'
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train",
                                                                          "path": "data/train-*.parquet"}]}]
    assert data["size_categories"] == ["n<1K"]
    assert "Offline sample" in text and "| `m23k` |" in text
    assert "https://github.com/)" not in text  # no placeholder link


def test_build_identity_is_a_real_url_or_the_build_never_a_placeholder():
    assert provenance.valid_url("https://example.org/team/iimed") == "https://example.org/team/iimed"
    for bad in ("github.com/x/y", "https://", "ftp://host/x", "https://user:pw@host/x", "https://a b/c", None, ""):
        assert provenance.valid_url(bad) is None
    from email.message import Message

    msg = Message()
    msg["Project-URL"] = "Repository, https://git.example.org/iimed"
    assert provenance.url_from_metadata(msg) == "https://git.example.org/iimed"
    info = provenance.build_info({"IIMED_REPOSITORY_URL": "https://git.example.org/iimed"})
    assert info.repository_url == "https://git.example.org/iimed" and "](https://git.example.org/iimed)" in info.markdown()
    bare = provenance.build_info({})
    if bare.repository_url is None:  # this checkout's metadata names no repository
        assert "](" not in bare.markdown() and "0.1" in bare.markdown() and "IIMED_REPOSITORY_URL" in bare.markdown()
        if bare.commit:
            assert bare.commit[:12] in bare.markdown()
