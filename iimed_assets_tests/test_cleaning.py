"""Cleaning: MinHash dedup and two-step decontamination (pure, against brute force and real data), and the
sft_* assets end to end over a real DuckDB file, down to a Parquet export that `datasets` loads."""

import gzip
import json
import random
import string
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from iimed_assets.assets.cleaning.common import read_eval_items
from iimed_assets.core import decontam, dedup
from iimed_assets.core.normalize import normalize_record
from iimed_assets.definitions import MATERIALIZE_ORDER
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.sources.loaders import SAMPLE_DIR
from iimed_assets.sources.registry import _R1_TRACE, _SELFBIORAG_MEDMCQA

CHATDOCTOR = [json.loads(line) for line in open(SAMPLE_DIR / "chatdoctor/chatdoctor5k.jsonl")]
# Real rows beyond the bundled sample (scripts/build_test_fixtures.py; each folder's SOURCE.md names the origin).
FIXTURES = Path(__file__).parent / "fixtures" / "cleaning"


def _jsonl(path: Path) -> list[dict]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


def _reference_shingles(texts, ngram, tokenize):
    """Shingle hashes by their definition, one Python step at a time: crc32 word hashes, h = mix(h·P1 + w)."""
    import zlib

    hashes, counts = [], []
    with np.errstate(over="ignore"):
        for t in texts:
            words = [w.encode("utf-8", "surrogatepass") for w in tokenize(t)]
            w = [np.uint64((zlib.crc32(b) << 32) | zlib.crc32(b, 0x5BD1E995)) for b in words]
            n = max(len(w) - ngram + 1, 1) if w else 0
            padded = w + [np.uint64(0)] * (ngram - 1)
            for start in range(n):
                h = np.uint64(0)
                for k in range(ngram):
                    h = dedup._mix(h * dedup._P1 + padded[start + k])
                hashes.append(h)
            counts.append(n)
    return np.array(hashes, dtype=np.uint64), np.array(counts, dtype=np.int64)


def test_minhash_kernels_are_bit_identical_to_numpy():
    """The numba kernels (ASCII fast path, Unicode path through the word-hash cache) give exactly the shingles of
    the definition, and signatures equal the numpy (shingles × permutations) minimum."""
    texts = [r["output"] for r in CHATDOCTOR[:40]] + [r["input"] for r in CHATDOCTOR[:20]]
    texts += ["", "!!!", "a", "a b", "Temp 38.5°C — fever”", "Kelvin \u212a and İstanbul", "Straße ÄÖÜ groß",
              "中文 混合 text 123", "tab\tsep\nnew_line under_score", "lone \ud800 surrogate", "UPPER lower MiXeD"]
    texts += [t.upper() for t in texts[:5]]
    assert any(not t.isascii() for t in texts) and any(t.isascii() for t in texts)
    for ngram, tokenize in ((4, dedup.tokens), (8, decontam.normalized_words), (1, dedup.tokens)):
        want_h, want_c = _reference_shingles(texts, ngram, tokenize)
        got_h, got_c = dedup.shingle_batch(texts, ngram, tokenize=tokenize)
        assert got_c.tolist() == want_c.tolist() and got_h.tolist() == want_h.tolist(), ngram
    mh = dedup.MinHasher(64, seed=5)
    h, c = dedup.shingle_batch(texts)
    sig = mh.signatures(h, c)
    x = (h ^ (h >> np.uint64(32))).astype(np.uint32)
    ends = np.cumsum(c)
    for d, (e, n) in enumerate(zip(ends.tolist(), c.tolist())):
        want = (x[e - n:e, None] * mh.a[None, :] + mh.b[None, :]).min(axis=0) if n else np.full(64, 0xFFFFFFFF)
        assert (sig[d] == want).all(), d


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
    """All 662 real R1 traces of MedAgentsBench: the bundled ones and, from the fixture, the rest (question fields)."""
    records = [r for f in sorted((SAMPLE_DIR / "r1_medical_traces").glob("*.jsonl")) for r in _jsonl(f)]
    records += _jsonl(FIXTURES / "r1_medical_traces" / "questions_not_bundled.jsonl")
    return [normalize_record(r, _R1_TRACE, source="r1", section="r1_traces")["prompt"] for r in records]


def test_every_real_r1_trace_is_removed(eval_warehouse):
    items = read_eval_items(Warehouse(path=str(eval_warehouse)))
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
    items = [it for it in read_eval_items(wh) if it.eval_set == "medmcqa_validation"]
    index = decontam.NgramIndex(items)
    demo = _jsonl(SAMPLE_DIR / "medical_o1_demo/demo_data.jsonl")  # complete (198 rows)
    hits = index.match_batch([d["question"] for d in demo])
    assert {151, 154, 193} <= {i for i, h in enumerate(hits) if h}
    (sb853,) = _jsonl(FIXTURES / "selfbiorag" / "medmc_qa_train_gpt4_row853.jsonl")
    row = normalize_record(sb853, _SELFBIORAG_MEDMCQA, source="medmcqa", section="qa_seed")
    assert index.match_batch([row["prompt"]])[0] is not None


def test_clean_prompts_false_positive_rate(eval_warehouse):
    index = decontam.NgramIndex(read_eval_items(Warehouse(path=str(eval_warehouse))))
    # non-medical MMLU (test_other + test_stem), all GSM8K test questions, all ChatDoctor-5k patient messages
    mmlu = _jsonl(FIXTURES / "mmlu_all" / "test_other_stem_nonmedical.jsonl.gz")
    clean = [r["question"] + "\n" + "\n".join(r[c] for c in "ABCD") for r in mmlu]
    clean += [r["question"] for r in _jsonl(FIXTURES / "gsm8k" / "test_questions.jsonl.gz")]
    clean += [r["input"] for r in _jsonl(FIXTURES / "chatdoctor" / "chatdoctor5k_inputs.jsonl.gz")]
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
    # Stand in for section 3's filter (tested in test_r1.py) with every R1 row, real traces on eval questions
    # included, plus 10 rows that copy a response under a restated prompt (for sft_deduped to drop).
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
    assert dg.materialize([assets["source_funnel"]], resources=resources).success
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
    assert f"{n_final:,} chat samples" in card and "near_duplicate" in card and "threshold=0.7" in card

    # Blocking checks run on the staged rows: when one fails, the run fails and sft_final and the ledger stay
    # exactly as they were. First a count bound no run can meet (total_in_bounds, ERROR)...
    before = _snapshot(con)
    con.close()
    with dg.instance_for_test() as instance:
        res = dg.materialize([assets["sft_final"]], resources=resources, raise_on_error=False, instance=instance,
                             run_config={"ops": {"sft_final": {"config": {"min_rows": 10**9}}}})
        checks = _logged_checks(instance, res.run_id)
    assert not res.success and not res.get_asset_materialization_events()
    assert not checks["total_in_bounds"].passed and checks["total_in_bounds"].metadata["rows"].value == n_final
    assert all(c.passed for name, c in checks.items() if name != "total_in_bounds")
    con = duckdb.connect(str(wh_path))
    assert _snapshot(con) == before
    # ... then a contaminated row put back into sft_decontaminated.
    con.execute("INSERT INTO sft_decontaminated SELECT * FROM sft_candidates WHERE id = ?", [sorted(traces)[0]])
    con.close()
    with dg.instance_for_test() as instance:
        res = dg.materialize([assets["sft_final"]], resources=resources, raise_on_error=False, instance=instance)
        checks = _logged_checks(instance, res.run_id)
    assert not res.success and not res.get_asset_materialization_events()
    assert not checks["no_contamination"].passed and not checks["rows_conserved_through_cleaning"].passed
    assert checks["no_contamination"].metadata["contaminated_rows"].value == 1
    con = duckdb.connect(str(wh_path))
    assert _snapshot(con) == before
    con.close()


def _snapshot(con) -> tuple:
    """sft_final and the whole row ledger, as sorted rows."""
    final = con.execute("SELECT id, split, md5(messages::VARCHAR) FROM sft_final ORDER BY id").fetchall()
    ledger = con.execute("SELECT asset, partition, row_id, reason, detail, run_id, recorded_at FROM row_ledger "
                         "ORDER BY ALL").fetchall()
    return final, ledger


def _logged_checks(instance, run_id: str) -> dict:
    """The check evaluations a run recorded in the instance (also those logged before a blocked swap failed it)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {r.event_log_entry.dagster_event.event_specific_data.check_name:
            r.event_log_entry.dagster_event.event_specific_data for r in records}


# ---- the swap: blocking checks on the staged rows, before anything is replaced ------------------------------

def _check(name: str, passed: bool, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=passed, severity=severity)


def _swap_fixture(tmp_path):
    from iimed_assets.resources.warehouse import Select, Swap

    wh = Warehouse(path=str(tmp_path / "wh.duckdb"))
    ledger = tmp_path / "ledger.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"row_id": ["x9"], "reason": ["too_short"], "detail": ["staged ledger row"]}), ledger)

    def partition_swap(n: int) -> Swap:  # rows x0..x{n-1} of partition p1, a side table, one ledger row
        return Swap("stage_t", Select("stage_t", "SELECT 'x' || i AS id, 'p1' AS source, i AS v FROM range(?) t(i)", [n]),
                    partition="p1", ledger_path=ledger,
                    side_tables=[Select("stage_side", "SELECT 'p1' AS source, ? AS n", [n])])

    def table_swap(n: int) -> Swap:
        return Swap("whole_t", Select("whole_t", "SELECT i AS v FROM range(?) t(i)", [n]),
                    ledger_sql="SELECT 'r' || i AS row_id, 'dropped' AS reason, NULL AS detail FROM range(?) t(i)",
                    ledger_params=[n])

    return wh, partition_swap, table_swap


def _state(wh: Warehouse) -> tuple:
    tables = sorted(t for (t,) in wh.fetch("SELECT table_name FROM information_schema.tables"))
    return (tables, wh.fetch("SELECT * FROM stage_t ORDER BY ALL"), wh.fetch("SELECT * FROM stage_side ORDER BY ALL"),
            wh.fetch("SELECT * FROM whole_t ORDER BY ALL"),
            wh.fetch("SELECT asset, partition, row_id, reason, detail, run_id, recorded_at FROM row_ledger ORDER BY ALL"))


def test_swap_commits_only_when_blocking_checks_pass_on_the_staged_rows(tmp_path):
    wh, partition_swap, table_swap = _swap_fixture(tmp_path)
    # other partitions are never touched
    wh.swap(partition_swap(2), run_id="r0")
    with wh.connect() as con:
        con.execute("INSERT INTO stage_t VALUES ('y0', 'p2', 7)")
    wh.swap(table_swap(2), run_id="r0")
    before = _state(wh)
    seen = {}

    def checks(staged):  # evaluated on the staged rows: the new ones, not yet visible in the real tables
        seen["rows"] = staged.count(wh)
        seen["ledger"] = staged.ledger_counts(wh)
        seen["side"] = wh.fetch_one(f"SELECT n FROM {staged.side['stage_side']}")[0]
        seen["real"] = wh.fetch_one("SELECT count(*) FROM stage_t WHERE source = 'p1'")[0]
        return [_check("rows_ok", True), _check("soft", False, dg.AssetCheckSeverity.WARN),
                _check("guard", False)]

    from iimed_assets.resources.warehouse import SwapBlocked

    with pytest.raises(SwapBlocked) as blocked:
        wh.swap(partition_swap(5), run_id="r1", checks=checks, blocking={"rows_ok", "soft", "guard"})
    assert seen == {"rows": 5, "ledger": {"too_short": 1}, "side": 5, "real": 2}
    assert [r.check_name for r in blocked.value.failed] == ["guard"]  # a failed WARN never blocks
    with pytest.raises(SwapBlocked):
        wh.swap(table_swap(9), run_id="r1", checks=lambda staged: [_check("guard", False)], blocking={"guard"})
    assert _state(wh) == before  # rows, side table, ledger and the table list (no staged table left) unchanged

    # a failed check that is not blocking, or a blocking one that passes, lets the swap through
    results = wh.swap(partition_swap(5), run_id="r2", blocking={"rows_ok"},
                      checks=lambda staged: [_check("rows_ok", True), _check("guard", False)])
    assert [r.check_name for r in results] == ["rows_ok", "guard"]
    wh.swap(table_swap(3), run_id="r2", checks=lambda staged: [_check("guard", True)], blocking={"guard"})
    tables, rows, side, whole, ledger = _state(wh)
    assert [r for r in rows if r[1] == "p1"] == [(f"x{i}", "p1", i) for i in range(5)] and ("y0", "p2", 7) in rows
    assert side == [("p1", 5)] and whole == [(0,), (1,), (2,)]
    assert sorted((a, p, r, run) for a, p, r, _, _, run, _ in ledger) == [
        ("stage_t", "p1", "x9", "r2"), ("whole_t", "all", "r0", "r2"), ("whole_t", "all", "r1", "r2"),
        ("whole_t", "all", "r2", "r2")]
    assert not [t for t in tables if t.startswith("_staged_")]


def test_swap_of_a_killed_run_leaves_the_previous_rows_and_its_staged_tables_are_dropped_next_time(tmp_path):
    """A process killed (os._exit) while its checks run: its staged tables are committed but never swapped in;
    the previous rows stay, and the next swap of the same asset and partition drops the leftovers."""
    import subprocess
    import sys

    wh, partition_swap, _ = _swap_fixture(tmp_path)
    wh.swap(partition_swap(2), run_id="r0")
    before = wh.fetch("SELECT * FROM stage_t ORDER BY ALL")
    code = (f"import os\nfrom iimed_assets.resources.warehouse import Warehouse, Select, Swap\n"
            f"wh = Warehouse(path={str(wh.database)!r})\n"
            "rows = Select('stage_t', \"SELECT 'z' || i AS id, 'p1' AS source, i AS v FROM range(4) t(i)\")\n"
            "swap = Swap('stage_t', rows, partition='p1')\n"
            "wh.swap(swap, run_id='killed', checks=lambda staged: os._exit(9), blocking={'x'})\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 9
    staged = [t for (t,) in wh.fetch("SELECT table_name FROM information_schema.tables") if t.startswith("_staged_")]
    assert len(staged) == 2 and wh.fetch("SELECT * FROM stage_t ORDER BY ALL") == before
    wh.swap(partition_swap(3), run_id="r1")
    left = [t for (t,) in wh.fetch("SELECT table_name FROM information_schema.tables") if t.startswith("_staged_")]
    assert left == [] and wh.fetch_one("SELECT count(*) FROM staged_swaps")[0] == 0
    assert wh.fetch_one("SELECT count(*) FROM stage_t")[0] == 3


def test_iter_keyset_reads_every_row_once_in_key_order(tmp_path):
    wh = Warehouse(path=str(tmp_path / "wh.duckdb"))
    with wh.connect() as con:
        con.execute("CREATE TABLE t AS SELECT i AS k, 'id' || lpad(i::VARCHAR, 3, '0') AS id, "
                    "CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END AS source FROM range(100) r(i) ORDER BY random()")
    batches = list(wh.iter_keyset("t", ["id"], "k", batch_rows=7))
    assert [len(b) for b in batches] == [7] * 14 + [2]
    assert [r["k"] for b in batches for r in b] == list(range(100))  # the key is always returned
    part = [r["id"] for b in wh.iter_partition("t", "a", ["id", "source"], batch_rows=5) for r in b]
    assert part == sorted(f"id{i:03d}" for i in range(0, 100, 3))
    assert list(wh.iter_keyset("t", ["id"], "k", where="source = ?", params=["zz"])) == []
