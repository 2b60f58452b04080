"""The run explains itself (issue 18): the funnel (pure, and on the bundled sample against the stage tables and the
ledger), stage records (per partition, settings hash, reruns named), licences and languages, the card's Hub YAML
(parsed by huggingface_hub), the build's identity, and `iimed-assets report`."""

from datetime import datetime

import duckdb

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


# ---- the whole graph on the bundled sample ---------------------------------------------------------------------
# Every source and eval partition of the bundled sample, every stage, the real embedder and MiniLM classifier;
# the generator and the judge are scripted OpenAI-compatible servers on 127.0.0.1 (deterministic answers). Then
# one section-2 partition is rerun with other settings (n=3) and cleaning, the funnel and the export run again.

ZERO_SOURCE = "medreason"  # the scripted judge rejects every free-form answer: this source ends with 0 rows


def _generator_script(call):
    from iimed_assets.testing.openai_loopback import Reply

    n, user = call.body.get("n", 1), call.last_user
    if "\\boxed" in user or "boxed" in user:
        answer = "A" if "A." in user or "(A)" in user or "A)" in user else "yes"
        return Reply(contents=[f"<think>Step {i}.</think> The answer is \\boxed{{{answer}}}." for i in range(n)])
    return Reply(contents=[f"<think>Considering the case.</think> Rest, fluids and review by a clinician ({i})."
                           for i in range(n)])


def _judge_script(call):
    from iimed_assets.testing.openai_loopback import Reply

    user, schema = call.last_user, call.response_schema
    if "<student_answer>" in user:  # section 2: free-form verification
        return Reply.json({"verdict": "INCORRECT"}) if schema else Reply(contents=["Verdict: [[INCORRECT]]"])
    ref = user.split("<reference_answer>")[1].split("</reference_answer>")[0].strip() if "<reference_answer>" in user \
        else ""
    score = len(ref) % 10 + 1  # section 4: deterministic per row
    return Reply.json({"score": score}) if schema else Reply(contents=[f"Rating: [[{score}]]"])


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    import dagster as dg

    from iimed_assets.definitions import MATERIALIZE_ORDER
    from iimed_assets.resources.catalog import SourceCatalog
    from iimed_assets.resources.embedder import Embedder
    from iimed_assets.resources.llm import EmbeddingClassifier, OpenAICompatibleLLM
    from iimed_assets.runner import materialize_in_order
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI

    base = tmp_path_factory.mktemp("sample_run")
    wh, out = base / "warehouse.duckdb", base / "export"
    (base / "home").mkdir()
    by_name = {a.key.to_user_string(): a for a in MATERIALIZE_ORDER}
    cleaning = [by_name[n] for n in ("sft_candidates", "sft_deduped", "sft_decontaminated", "sft_final",
                                     "source_funnel", "sft_export")]
    with LoopbackOpenAI(script=_generator_script) as gen, LoopbackOpenAI(script=_judge_script) as judge_server, \
            dg.instance_for_test(temp_dir=str(base / "home")) as instance:
        resources = {"warehouse": Warehouse(path=str(wh)), "catalog": SourceCatalog(mode="sample"),
                     "embedder": Embedder(), "classifier": EmbeddingClassifier(),
                     "generator": OpenAICompatibleLLM(base_url=gen.url, model="scripted-generator"),
                     "judge": OpenAICompatibleLLM(base_url=judge_server.url, model="scripted-judge")}
        config = {"sft_export": {"out_dir": str(out)}, "qa_samples": {"n": 2}}
        first = materialize_in_order(MATERIALIZE_ORDER, instance=instance, resources=resources, config=config,
                                     log=lambda line: None)
        card_before = (out / "README.md").read_text()
        rerun = materialize_in_order([by_name["qa_samples"], by_name["qa_verified"]], instance=instance,
                                     resources=resources, partitions=["medqa"], config={"qa_samples": {"n": 3}},
                                     log=lambda line: None)
        again = materialize_in_order(cleaning, instance=instance, resources=resources, config=config,
                                     log=lambda line: None)
    failed = [o.line() for o in [*first, *rerun, *again] if o.status == "FAILED"]
    assert not failed, failed
    return {"warehouse": wh, "export": out, "card_before": card_before}


def _by_source(con, sql: str, params=()) -> dict[str, int]:
    return {s: int(n) for s, n in con.execute(sql, list(params)).fetchall()}


def test_sample_funnel_equals_the_stage_tables_and_the_ledger(sample_run):
    """Recounted here from the tables, independently of the asset: rows out per source and stage, the drops of a
    partitioned stage from its ledger, the drops of a cleaning stage as the difference of its input and output
    tables per source (no join of ledger row ids), and nothing unaccounted."""
    con = duckdb.connect(str(sample_run["warehouse"]), read_only=True)
    stored = con.execute("SELECT section, source, stage, unit, rows_in, rows_out, rows_written, dropped, "
                         "unaccounted, materialized FROM source_funnel").fetchall()
    funnel_rows = {(src, stage): r for section, src, stage, *r in stored}
    sources = {(section, src) for section, src, *_ in stored}
    assert {src for _, src in sources} >= {s.name for s in registry.SOURCES if s.section != "eval"}
    assert all(r[-1] for r in funnel_rows.values()), "every stage ran"
    assert [k for k, r in funnel_rows.items() if r[5] != 0] == []  # nothing unaccounted
    for section in funnel.SECTION_ORDER:
        path = funnel.stages_of(section)
        names = [src for sec, src in sources if sec == section]
        for stage in path:
            key = "count(DISTINCT prompt_id)" if stage.unit == funnel.PROMPTS else "count(*)"
            out = _by_source(con, f"SELECT source, {key} FROM {stage.table} GROUP BY 1")
            written = _by_source(con, f"SELECT source, count(*) FROM {stage.table} GROUP BY 1")
            for src in names:
                unit, rows_in, rows_out, rows_written, dropped, _, _ = funnel_rows[(src, stage.asset)]
                assert (rows_out, rows_written) == (out.get(src, 0), written.get(src, 0)), (src, stage.asset)
                assert rows_in == rows_out + dropped, (src, stage.asset)
            if not stage.ledger_join:  # partitioned ledger: partition = source
                ledger = _by_source(con, "SELECT partition, count(*) FROM row_ledger WHERE asset = ? GROUP BY 1",
                                    [stage.asset])
                assert {s: funnel_rows[(s, stage.asset)][4] for s in names if funnel_rows[(s, stage.asset)][4]} == \
                    {s: n for s, n in ledger.items() if s in names}, stage.asset
        # cleaning drops per source = its input table minus its output table
        prev = _by_source(con, f"SELECT source, count(*) FROM {funnel.SECTION_OUTPUT[section]} GROUP BY 1")
        for stage in funnel.CLEANING_STAGES:
            now = _by_source(con, f"SELECT source, count(*) FROM {stage.table} GROUP BY 1")
            for src in names:
                assert funnel_rows[(src, stage.asset)][4] == prev.get(src, 0) - now.get(src, 0), (src, stage.asset)
            prev = now
    for stage in ("sft_candidates", "sft_deduped", "sft_decontaminated", "r1_medical_traces"):
        total = con.execute("SELECT count(*) FROM row_ledger WHERE asset = ?", [stage]).fetchone()[0]
        assert sum(r[4] for (s, st), r in funnel_rows.items() if st == stage) == total, stage
    # the roll-up is the sum of the sources
    rollup = con.execute("SELECT section, stage, rows_in, rows_out, dropped FROM section_funnel").fetchall()
    for section, stage, rows_in, rows_out, dropped in rollup:
        mine = [funnel_rows[(src, stage)] for sec, src in sources if sec == section]
        assert (rows_in, rows_out, dropped) == (sum(r[1] for r in mine), sum(r[2] for r in mine),
                                                sum(r[4] for r in mine))
    # the zero source is there, with 0 at the end and the reason it got there
    zero = {stage: r for (src, stage), r in funnel_rows.items() if src == ZERO_SOURCE}
    assert zero["qa_seed_rows"][2] > 0 and zero["qa_verified"][2] == 0 and zero["sft_final"][3] == 0
    reasons = dict(con.execute("SELECT unnest(map_keys(dropped_by_reason)), unnest(map_values(dropped_by_reason)) "
                               "FROM source_funnel WHERE source = ? AND stage = 'qa_verified'", [ZERO_SOURCE]).fetchall())
    assert reasons == {"no_correct_sample": zero["qa_verified"][1]}
    assert con.execute("SELECT sum(rows_written) FROM source_funnel WHERE stage = 'sft_final'").fetchone()[0] == \
        con.execute("SELECT count(*) FROM sft_final").fetchone()[0] > 0


def test_sample_card_compares_reports_both_settings_and_is_valid_hub_yaml(sample_run):
    text = (sample_run["export"] / "README.md").read_text()
    data = DatasetCard(text).data.to_dict()
    con = duckdb.connect(str(sample_run["warehouse"]), read_only=True)
    final_sources = _by_source(con, "SELECT source, count(*) FROM sft_final GROUP BY 1")
    contributing = [(s, registry.BY_NAME[s].licence) for s in final_sources]
    assert data["license"] == licences.card_licence(contributing).license
    assert data["language"] == licences.languages_present(
        con.execute("SELECT language, count(*) FROM sft_final GROUP BY 1").fetchall())
    # published next to this run, with the ratio
    total = sum(final_sources.values())
    assert f"| **total** | 2,197,741 | {total:,} | {report.ratio(total, 2_197_741)} |" in text
    assert "| instruct | healthcaremagic |" in text and "215,647" in text
    # the funnel per source, the zero source with its 0 and where its rows went
    assert f"| qa_seed | {ZERO_SOURCE} |" in text and "qa_verified: no_correct_sample" in text
    assert "![where each source's rows went](source_funnel.png)" in text
    assert (sample_run["export"] / "source_funnel.png").read_bytes()[:4] == b"\x89PNG"
    # every model stage recorded its settings; qa_samples: both settings, and medqa's rerun named
    section = text.split("## Models and parameters")[1].split("## Decontamination")[0]
    for stage, _ in card.STAGE_DESCRIPTIONS:
        (line,) = [line for line in section.splitlines() if line.startswith(f"- **`{stage}`** (")]
        assert "no stage record" not in line, line
    qa_line = [line for line in section.splitlines() if "qa_samples" in line or line.startswith("  - ")]
    joined = "\n".join(qa_line)
    assert "were produced with different settings" in joined and "n=2 (settings" in joined and "n=3 (settings" in joined
    assert "`qa_samples[medqa]` was rerun with other settings: now n=3" in joined and "replacing n=2" in joined
    assert "generator.model=openai-compatible:scripted-generator" in section
    assert "embedding_model=all-MiniLM-L6-v2" in section and "classifier.model=embedding:all-MiniLM-L6-v2" in section
    assert "template_hash=" in section and "judge.model=openai-compatible:scripted-judge" in section
    # the card before the rerun had one setting for every partition
    before = sample_run["card_before"].split("## Models and parameters")[1].split("## Decontamination")[0]
    assert "were produced with different settings" not in before and "was rerun" not in before
    assert "n=2" in [line for line in before.splitlines() if line.startswith("- **`qa_samples`**")][0]
    # eval sets with their item counts, and the build named (no placeholder link)
    items = _by_source(con, "SELECT source, count(*) FROM eval_items GROUP BY 1")
    assert f"`medqa_usmle_4opt` (MedQA USMLE test (4 options)) | fzkuji/MedQA | {items['medqa_usmle_4opt']:,} |" in text
    assert "](https://github.com/)" not in text and "`iimed_assets`" in text
    assert "The stages that made the current rows ran with build" in text  # version+commit kept per stage record


def test_report_command_prints_the_same_tables(sample_run, capsys):
    from iimed_assets.cli import main

    assert main(["report", "--warehouse", str(sample_run["warehouse"])]) == 0
    printed = capsys.readouterr().out
    con = duckdb.connect(str(sample_run["warehouse"]), read_only=True)
    total = con.execute("SELECT count(*) FROM sft_final").fetchone()[0]
    assert "This run next to the published card" in printed
    assert [line for line in printed.splitlines() if line.startswith("total ")][0].split()[1:3] == [
        "2,197,741", f"{total:,}"]
    zero = [line for line in printed.splitlines() if line.startswith(f"qa_seed           {ZERO_SOURCE}")]
    assert zero and zero[0].split()[3] == "0"  # read, final 0
    assert f"Funnel — {report.SECTION_TITLES['qa_seed']}" in printed
    assert "qa_samples[medqa] was rerun with other settings" in printed
    assert main(["report", "--warehouse", str(sample_run["warehouse"].parent / "missing.duckdb")]) == 2
