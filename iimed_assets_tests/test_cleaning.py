"""Cleaning: MinHash dedup and two-step decontamination (pure, against brute force and real data), and the
sft_* assets end to end over a real DuckDB file, down to a Parquet export that `datasets` loads."""

import json
import random
import string

import dagster as dg
import duckdb
import numpy as np
import pytest
from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from iimed_assets.assets.cleaning import eval_index_items
from iimed_assets.core import decontam, dedup
from iimed_assets.core.normalize import normalize_record
from iimed_assets.definitions import MATERIALIZE_ORDER
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.sources.loaders import SAMPLE_DIR
from iimed_assets.sources.registry import _R1_TRACE, _SELFBIORAG_MEDMCQA

from .conftest import SHARED_DATA

CHATDOCTOR = [json.loads(line) for line in open(SAMPLE_DIR / "chatdoctor/chatdoctor5k.jsonl")]


def _edited(text: str, rng: random.Random, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(["patient", "xyz", "the", "dose"])
    return " ".join(words)


# ---- dedup ----------------------------------------------------------------------------------------------------

def test_near_duplicate_mask_equals_exact_jaccard_brute_force():
    rng = random.Random(7)
    base = [r["output"] for r in CHATDOCTOR]
    texts = base + [_edited(rng.choice(base), rng, rng.randint(1, 25)) for _ in range(150)] + ["", "Hi.", "hi"]
    rng.shuffle(texts)
    got = dedup.near_duplicate_mask(texts)
    assert got == dedup.near_duplicate_mask_exact(texts)
    assert 20 < sum(got) < 150  # some edits stay above 0.7, heavier ones fall below


def test_sft_deduped_asset_equals_brute_force_across_chunks(tmp_path):
    """The asset's chunked pass (kept rows' buckets in a scratch DuckDB, sets re-read past a tiny cache) drops
    exactly the rows brute force does, conserves rows, and records for every drop a kept earlier row at the
    measured Jaccard; exact copies of a dropped row point at that row's own match."""
    from iimed_assets.assets.cleaning import sft_deduped

    rng = random.Random(11)
    base = [r["output"] for r in CHATDOCTOR]  # ~100 real answers
    texts = list(base)
    for _ in range(250):
        texts.insert(rng.randrange(len(texts) + 1), _edited(rng.choice(base), rng, rng.randint(1, 20)))
    dup_of_dropped = _edited(base[3], rng, 1)
    texts += [dup_of_dropped, dup_of_dropped, base[5], "", "!!!", "Hi."]  # exact copies; rows with no shingle
    wh = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(wh))
    con.execute("CREATE TABLE sft_candidates AS SELECT 'r' || lpad(i::VARCHAR, 5, '0') AS id, 'chatdoctor' AS "
                "source, 'instruct' AS section, 'q' AS prompt, "
                "[{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': t}] AS messages, "
                "i AS cand_order FROM (SELECT unnest(?::VARCHAR[]) AS t, generate_subscripts(?::VARCHAR[], 1) AS i)",
                [texts, texts])
    con.close()
    res = dg.materialize([sft_deduped], resources={"warehouse": Warehouse(path=str(wh))}, run_config={
        "ops": {"sft_deduped": {"config": {"batch_rows": 37, "cached_sets": 5}}}})
    assert res.success and all(c.passed for c in res.get_asset_check_evaluations())
    meta = res.get_asset_materialization_events()[0].materialization.metadata
    assert meta["kept_sets_reread"].value > 0 and meta["exact_copies"].value >= 2
    con = duckdb.connect(str(wh))
    kept = {r[0] for r in con.execute("SELECT cand_order FROM sft_deduped").fetchall()}
    ledger = dict(con.execute("SELECT row_id, detail FROM row_ledger WHERE asset = 'sft_deduped'").fetchall())
    ids = [r[0] for r in con.execute("SELECT id FROM sft_candidates ORDER BY cand_order").fetchall()]
    expected = dedup.near_duplicate_mask_exact(texts)
    assert [i + 1 not in kept for i in range(len(texts))] == expected
    assert len(kept) + len(ledger) == len(texts) and sum(expected) > 30
    sets = [dedup.shingle_hashes(t) for t in texts]
    for k, rid in enumerate(ids):
        if rid in ledger:
            kept_id, sim = ledger[rid].removeprefix("kept=").split(" jaccard=")
            j = ids.index(kept_id)
            assert j < k and j + 1 in kept and dedup.jaccard(sets[k], sets[j]) == pytest.approx(float(sim), abs=1e-3)
            assert float(sim) >= 0.7


def test_threshold_holds_literally():
    words = [f"w{i}" for i in range(200)]
    a = " ".join(words)
    sa = dedup.shingle_hashes(a)
    # replace k words at the end: Jaccard decreases with k; find the pair straddling 0.7
    sims = []
    for k in range(1, 60):
        b = " ".join(words[:-k] + [f"z{i}" for i in range(k)])
        sims.append((dedup.jaccard(sa, dedup.shingle_hashes(b)), b))
    above = min((s for s in sims if s[0] >= 0.7), key=lambda s: s[0])
    below = max((s for s in sims if s[0] < 0.7), key=lambda s: s[0])
    assert dedup.near_duplicate_mask([a, above[1]]) == [False, True]
    assert dedup.near_duplicate_mask([a, below[1]]) == [False, False]


def test_shingles_are_lowercased_word_4grams():
    assert dedup.jaccard(dedup.shingle_hashes("The  Heart, beats fast today!"),
                         dedup.shingle_hashes("the heart beats FAST today")) == 1.0
    assert len(dedup.shingle_hashes("a b c d e")) == 2 and len(dedup.shingle_hashes("a b")) == 1
    assert len(dedup.shingle_hashes("!!!")) == 0


def test_minhash_estimates_jaccard_like_datasketch():
    from datasketch import MinHash

    rng = random.Random(3)
    base = [r["output"] for r in CHATDOCTOR[:40]]
    pairs = [(t, _edited(t, rng, rng.randint(1, 30))) for t in base]
    mh = dedup.MinHasher(256)
    ours, theirs, exact = [], [], []
    for a, b in pairs:
        sig = mh.signatures_of([a, b])
        ours.append((sig[0] == sig[1]).mean())
        ms = []
        for t in (a, b):
            m = MinHash(num_perm=256)
            w = dedup.tokens(t)
            m.update_batch([" ".join(w[i:i + 4]).encode() for i in range(max(len(w) - 3, 1))])
            ms.append(m)
        theirs.append(ms[0].jaccard(ms[1]))
        exact.append(dedup.jaccard(dedup.shingle_hashes(a), dedup.shingle_hashes(b)))
    err_ours = np.abs(np.array(ours) - exact).mean()
    err_theirs = np.abs(np.array(theirs) - exact).mean()
    assert err_ours < 0.04 and err_ours < 1.5 * err_theirs + 0.01


def test_lsh_params_sit_below_the_threshold():
    b, r = dedup.lsh_params(128, 0.7)
    assert b * r == 128 and (1 / b) ** (1 / r) < 0.7 and 1 - (1 - 0.7 ** r) ** b > 0.999


# ---- decontamination: pure ------------------------------------------------------------------------------------

EVAL = [
    "A 45-year-old man presents with crushing substernal chest pain radiating to the left arm for two hours. "
    "Which of the following is the most likely diagnosis?",
    "Which of the following drugs is used first line for absence seizures in children aged five to ten years?",
    "Does aspirin reduce mortality?",
]


def test_ngram_catches_copies_under_boilerplate_unicode_and_punctuation():
    copy = ("Please reason step by step, and put your final answer within \\boxed{}.\n"
            "A 45‑year‑old MAN presents with crushing sub-sternal chest pain — radiating to the left arm for two "
            "hours!! Which of the following is the most likely diagnosis")
    assert decontam.ngram_contaminated([copy], EVAL) == [True]
    assert decontam.ngram_contaminated(["Does aspirin reduce mortality?"], EVAL) == [True]  # short item, exact
    clean = ["Which of the following is the most likely diagnosis for a rash after hiking in the woods?",
             "My father had chest pain radiating to the left arm for two days. Is it his heart?"]  # 2 shared 8-grams
    assert decontam.ngram_contaminated(clean, EVAL) == [False, False]


def test_strip_boilerplate():
    text = "What is X?\n\nPlease reason step by step, and put the letter of your final answer within \\boxed{}."
    assert decontam.strip_boilerplate(text) == "What is X?"


def test_length_window_is_a_necessary_condition():
    rng = random.Random(0)
    for _ in range(3000):
        a = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 80)))
        lo, hi = decontam.length_window(len(a), 80.0)
        if fuzz.ratio(a, b) >= 80.0:
            assert lo <= len(b) <= hi


def _brute_force(texts, eval_texts, t=80.0):
    m = process.cdist([default_process(x) for x in texts], [default_process(e) for e in eval_texts],
                      scorer=fuzz.ratio, processor=None, score_cutoff=t)
    return list((m >= t).any(axis=1))


def test_fuzzy_equals_brute_force_on_real_prompts():
    rng = random.Random(1)
    medqa = [json.loads(line) for line in open(SAMPLE_DIR / "medqa/test_4options.jsonl")][:600]
    evals = [r["question"] for r in medqa]
    # indexed as the eval index does: bare question, and question + options (a prefix pair sharing a kernel lane)
    evals += [r["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in sorted(r["options"].items()))
              for r in medqa[:300]]
    evals += [json.loads(line)["instances"]["input"] for line in open(SAMPLE_DIR / "selfbiorag/live_qa_test.jsonl")][:50]
    prompts = [r["input"] for r in CHATDOCTOR]
    # near copies at several edit strengths, so scores land on both sides of 80
    for q in evals[:120]:
        chars = list(q)
        for _ in range(rng.randint(0, len(chars) // 4)):
            chars[rng.randrange(len(chars))] = rng.choice(string.ascii_lowercase)
        prompts.append("".join(chars))
    prompts += ["", "   ", "?", evals[3].upper()]
    expected = _brute_force(prompts, evals)
    index = decontam.FuzzyIndex(evals)
    got = [h is not None for h in index.match_batch(prompts)]
    assert got == expected and 20 < sum(got) < 125
    # the bounds rule out most pairs before any LCS, the prefix bound most of the rest; only matches get scored
    assert index.pairs_lcs < index.pairs_in_window and index.pairs_lcs < len(prompts) * len(evals) / 4
    assert index.pairs_early_exit > index.pairs_lcs / 2
    assert 0 < index.pairs_scored < index.pairs_lcs / 10
    assert decontam.fuzzy_contaminated(prompts, evals) == expected
    # threads split the prompts; the answer (and the scores) stay the same
    again = decontam.FuzzyIndex(evals).match_batch(prompts, workers=2)
    assert again == index.match_batch(prompts)
    # both kernel orientations (rows over the eval text, or over the prompt when the eval text is longer) agree
    for transpose_min, transposed in ((0, True), (10**9, False)):
        other = decontam.FuzzyIndex(evals)
        other.transpose_min, other.chunk = transpose_min, 64
        assert other.match_batch(prompts) == again and (other.pairs_transposed > 0) == transposed
        assert other.pairs_shared > 0 and other.pairs_lcs == index.pairs_lcs / 2  # index ran twice


def test_lcs_kernel_is_exact_at_and_around_every_cutoff():
    """The kernel returns the true LCS whenever it reaches `need` and a negative answer only when it does not,
    across word boundaries (63/64/65, 127-129 characters), unequal lengths, non-ASCII text (its own bucket) and
    needs just below, at and above the true value; the true LCS is rapidfuzz's. Each prompt meets a batch of
    texts, so pairs run two at a time with lanes starting, stopping early and ending at different rows; with
    share_prefixes, a prefix of a text (equal texts too) rides in that text's lane and is decided on its bits."""
    from rapidfuzz.distance import LCSseq

    from iimed_assets.core import lcs

    rng = random.Random(3)
    sizes = [0, 1, 5, 63, 64, 65, 127, 128, 129, 300, 700]
    checked = pruned = early = 0
    for _ in range(150):
        a = "".join(rng.choice("abcde é") for _ in range(rng.choice(sizes)))
        bs, needs, truth = [], [], []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:  # unrelated text: low LCS
                b = "".join(rng.choice("abcdef ü") for _ in range(rng.choice(sizes)))
            else:  # an edited copy of a: high LCS
                chars = list(a)
                for _ in range(rng.randint(0, len(chars) // 3 + 1)):
                    if chars and rng.random() < 0.5:
                        del chars[rng.randrange(len(chars))]
                    else:
                        chars.insert(rng.randrange(len(chars) + 1), rng.choice("abcz"))
                b = "".join(chars)
            for b in (b, b[:rng.randint(0, len(b))]):  # and a prefix of it, to share its lane
                true = LCSseq.similarity(a, b)
                for need in {max(0, true - 1), true, true + 1, rng.randint(0, max(len(a), 1))}:
                    bs.append(b)
                    needs.append(need)
                    truth.append(true)
        for share in (False, True):
            for b, need, true, got in zip(bs, needs, truth, lcs.lcs_if_at_least(a, bs, needs, share)):
                checked += 1
                if true >= need:
                    assert got == true, (a, b, need, share)
                else:
                    assert got < 0, (a, b, need, share)
                    pruned += 1
                    early += got == -2
    assert checked > 4000 and pruned > 1000 and early > 100


# ---- proof on real data -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "warehouse.duckdb"
    asset = next(a for a in MATERIALIZE_ORDER if a.key.to_user_string() == "eval_items")
    resources = {"warehouse": Warehouse(path=str(path)), "catalog": SourceCatalog(mode="sample")}
    for key in asset.partitions_def.get_partition_keys():
        assert dg.materialize([asset], partition_key=key, resources=resources).success
    return path


def _trace_prompts() -> list[str]:
    prompts = []
    for f in sorted((SHARED_DATA / "r1_medical_traces").glob("*.jsonl")):
        for line in open(f):
            row = normalize_record(json.loads(line), _R1_TRACE, source="r1", section="r1_traces")
            prompts.append(row["prompt"])
    return prompts


def test_every_real_r1_trace_is_removed(eval_warehouse):
    items = eval_index_items(Warehouse(path=str(eval_warehouse)))
    prompts = _trace_prompts()
    assert len(prompts) == 662
    hits = decontam.NgramIndex(items).match_batch([decontam.strip_boilerplate(p) for p in prompts])
    missed = [p for p, h in zip(prompts, hits) if h is None]
    fuzzy_texts = [t for it in items for t in it.texts]
    fuzzy = decontam.FuzzyIndex(fuzzy_texts).match_batch(missed)
    assert all(h is not None for h in fuzzy)  # together: 100%
    assert len(missed) == 0  # and in fact the 8-gram step alone catches all of them


def test_known_train_eval_overlaps_are_caught(eval_warehouse):
    wh = Warehouse(path=str(eval_warehouse))
    items = [it for it in eval_index_items(wh) if it.eval_set == "medmcqa_validation"]
    index = decontam.NgramIndex(items)
    demo = [json.loads(line) for line in open(SHARED_DATA / "medical_o1_demo/demo_data.jsonl")]
    hits = index.match_batch([d["question"] for d in demo])
    assert {151, 154, 193} <= {i for i, h in enumerate(hits) if h}
    sb = [json.loads(line) for line in open(SHARED_DATA / "selfbiorag/medmc_qa_train_gpt4.jsonl")]
    row = normalize_record(sb[853], _SELFBIORAG_MEDMCQA, source="medmcqa", section="qa_seed")
    assert index.match_batch([row["prompt"]])[0] is not None


def test_clean_prompts_false_positive_rate(eval_warehouse):
    index = decontam.NgramIndex(eval_index_items(Warehouse(path=str(eval_warehouse))))
    medical = {"anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
               "professional_medicine", "high_school_biology", "nutrition", "virology", "human_aging"}
    mmlu = [json.loads(line) for name in ("test_other.jsonl", "test_stem.jsonl")
            for line in open(SHARED_DATA / "mmlu_all" / name)]
    clean = [r["question"] + "\n" + "\n".join(r[c] for c in "ABCD") for r in mmlu if r["subject"] not in medical]
    clean += [json.loads(line)["question"] for line in open(SHARED_DATA / "gsm8k/test.jsonl")]
    clean += [json.loads(line)["input"] for line in open(SHARED_DATA / "chatdoctor/chatdoctor5k.jsonl")]
    flagged = sum(h is not None for h in index.match_batch(clean))
    assert len(clean) > 10_000 and flagged / len(clean) < 0.005


# ---- the assets -----------------------------------------------------------------------------------------------

def test_cleaning_assets_end_to_end(eval_warehouse, tmp_path):
    wh_path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(wh_path))
    con.execute(f"ATTACH '{eval_warehouse}' AS ev (READ_ONLY)")
    con.execute("CREATE TABLE eval_items AS SELECT * FROM ev.eval_items")
    con.close()
    resources = {"warehouse": Warehouse(path=str(wh_path)), "catalog": SourceCatalog(mode="sample")}
    assets = {a.key.to_user_string(): a for a in MATERIALIZE_ORDER}
    for name in ("public_reasoning_rows", "r1_trace_rows"):
        for key in assets[name].partitions_def.get_partition_keys():
            assert dg.materialize([assets[name]], partition_key=key, resources=resources).success
    con = duckdb.connect(str(wh_path))
    # Section 3's filter is another issue: stand in for its table with every R1 row (real traces on eval
    # questions included) plus exact and near copies of some responses.
    con.execute("CREATE TABLE r1_medical_traces AS SELECT *, 0 AS cluster_id, 'medical' AS domain FROM r1_trace_rows")
    con.execute("INSERT INTO r1_medical_traces SELECT id || 'c', source, section, "
                "'Restated: ' || prompt, messages, gold_answer, options, language, meta, 1, 'medical' "
                "FROM r1_trace_rows WHERE meta->>'predicted_answer' IS NULL ORDER BY id LIMIT 10")
    traces = {r[0] for r in con.execute("SELECT id FROM r1_trace_rows WHERE meta->>'predicted_answer' IS NOT NULL").fetchall()}
    con.close()
    assert len(traces) > 300
    for name in ("sft_candidates", "sft_deduped", "sft_decontaminated"):
        res = dg.materialize([assets[name]], resources=resources)
        assert res.success and all(c.passed for c in res.get_asset_check_evaluations()), name
    res = dg.materialize([assets["sft_final"]], resources=resources,
                         run_config={"ops": {"sft_final": {"config": {"validation_fraction": 0.1}}}})
    checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
    assert res.success and all(c.passed for c in checks.values()), {n: c.passed for n, c in checks.items()}
    out = tmp_path / "export"
    assert dg.materialize([assets["sft_export"]], resources=resources,
                          run_config={"ops": {"sft_export": {"config": {"out_dir": str(out)}}}}).success

    con = duckdb.connect(str(wh_path))
    ledger = dict(con.execute("SELECT row_id, reason FROM row_ledger WHERE asset LIKE 'sft_%'").fetchall())
    final = {r[0] for r in con.execute("SELECT id FROM sft_final").fetchall()}
    assert traces.isdisjoint(final)  # 100% of the real traces on test questions removed
    reached = {r[0] for r in con.execute("SELECT id FROM sft_deduped").fetchall()} & traces
    assert len(reached) > 300 and all(ledger[t].startswith("contaminated_") for t in reached)
    assert {ledger[t] for t in traces - reached} <= {"near_duplicate"}  # a copy of a kept trace, dropped earlier
    copies = con.execute("SELECT l.row_id, l.detail FROM row_ledger l WHERE l.reason = 'near_duplicate'").fetchall()
    assert len(copies) >= 10 and all(d.startswith("kept=") and "jaccard=" in d for _, d in copies)
    detail = con.execute("SELECT detail FROM row_ledger WHERE reason = 'contaminated_ngram' LIMIT 1").fetchone()[0]
    assert detail.startswith("eval_set=") and " item=" in detail and " ngram=" in detail
    splits = dict(con.execute("SELECT split, count(*) FROM sft_final GROUP BY 1").fetchall())
    assert splits["validation"] > 0 and splits["train"] > splits["validation"]
    n_final = sum(splits.values())

    import datasets

    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (out / "data").glob("train-*.parquet")),
                               split="train")
    assert len(ds) == splits["train"] and ds[0]["messages"][0]["role"] in ("user", "system")
    assert sum(1 for _ in open(out / "train.jsonl")) == splits["train"]
    card = (out / "README.md").read_text()
    assert f"{n_final:,} chat samples" in card and "near_duplicate" in card and "Jaccard >= 0.7" in card

    # the blocking check fails when a contaminated row is put back
    con.execute("INSERT INTO sft_decontaminated SELECT * FROM sft_candidates WHERE id = ?", [sorted(traces)[0]])
    con.close()
    res = dg.materialize([assets["sft_final"]], resources=resources, raise_on_error=False)
    checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
    assert not checks["no_contamination"].passed and not checks["rows_conserved_through_cleaning"].passed
