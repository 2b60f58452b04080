"""Section 3: embeddings, K-means, the domain vote and the medical/biology filter."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from iimed_assets.core import clustering, domains
from iimed_assets.core.domains import UNKNOWN, classification_messages, majority_vote, parse_domain
from iimed_assets.resources.defaults import catalog_from_env, warehouse_from_env
from iimed_assets.sources.loaders import SAMPLE_DIR

from .conftest import logged_checks


# ---- the answer parser and the vote ------------------------------------------------------------------------

@pytest.mark.parametrize("answer, label", [
    ("Domain: Medical", "Medical"),
    ("Medical", "Medical"),
    ("domain: biology.", "Biology"),
    ("**Domain:** Computer Science", "Computer Science"),
    ("<think>This is about enzymes, maybe chemistry</think>Domain: Biology", "Biology"),
    ("The question is about clinical medicine.", "Medical"),
    ("I think this is a math problem", "Mathematics"),
    ("Answer: Programming", "Computer Science"),
    ("Physics and also chemistry", "Physics"),  # the first named wins
    ("Domain: Chemistry (not Biology)", "Chemistry"),
    ("I cannot tell.", UNKNOWN),
    ("", UNKNOWN),
    (None, UNKNOWN),
    ("<think>Medical? unsure", UNKNOWN),  # unfinished reasoning only
    ("mathematically speaking, Law", "Law"),  # 'mathematically' is not a whole-word synonym
])
def test_parse_domain(answer, label):
    assert parse_domain(answer) == label


def test_classification_prompt_lists_every_domain_and_clips_long_prompts():
    messages = classification_messages("What causes scurvy?  " + "x " * 5000)
    user = messages[-1]["content"]
    assert all(d in user for d in domains.DOMAINS) and "Medical" in domains.DOMAINS and "Biology" in domains.DOMAINS
    assert len(user) < domains.MAX_PROMPT_CHARS + 600 and "What causes scurvy?" in user


def test_majority_vote():
    vote = majority_vote(["Medical"] * 6 + ["Biology"] * 3 + [UNKNOWN])
    assert (vote.label, vote.agreement, vote.voters, vote.tie_break) == ("Medical", 0.6, 10, "")
    assert vote.votes == {"Medical": 6, "Biology": 3, UNKNOWN: 1}


def test_tie_goes_to_the_label_of_the_nearest_prompt_and_is_recorded():
    vote = majority_vote(["Chemistry", "Biology", "Biology", "Chemistry", UNKNOWN])
    assert vote.label == "Chemistry" and vote.agreement == 0.4
    assert vote.tie_break == "tie Biology/Chemistry at 2 votes → Chemistry (nearest prompt)"
    assert majority_vote(["Biology", "Chemistry", "Chemistry", "Biology"]).label == "Biology"


def test_unknown_never_wins_unless_alone():
    assert majority_vote([UNKNOWN, UNKNOWN, UNKNOWN, "Law"]).label == "Law"
    assert majority_vote([UNKNOWN, UNKNOWN]).label == UNKNOWN
    assert majority_vote([]).label == UNKNOWN


# ---- K-means --------------------------------------------------------------------------------------------------

def _blobs(n_per: int, centers: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    labels = np.repeat(np.arange(centers), n_per)
    x = c[labels] + rng.normal(scale=0.03, size=(len(labels), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _purity(assign: np.ndarray, truth: np.ndarray) -> float:
    hits = 0
    for cluster in np.unique(assign):
        hits += np.bincount(truth[assign == cluster]).max()
    return hits / len(truth)


def test_choose_k_and_method():
    assert clustering.choose_k(1000) == 25 and clustering.choose_k(10) == 1 and clustering.choose_k(0) == 0
    assert clustering.choose_k(1_000_000, 50_000) == 50_000 and clustering.choose_k(30, 50_000) == 30
    assert clustering.choose_method(100_000, 1000) == "flat"
    assert clustering.choose_method(1_000_000, 50_000) == "two_level"
    with pytest.raises(ValueError):
        clustering.choose_method(10, 2, "hierarchical")


@pytest.mark.parametrize("method", ["flat", "two_level"])
def test_kmeans_recovers_separated_clusters(method):
    x, truth = _blobs(60, 40)
    result = clustering.kmeans(x, 40, method=method, seed=1)
    assert result.method == method and result.k == 40 and result.centroids.shape == (40, 32)
    assert len(result.assignment) == len(x) and result.assignment.min() >= 0 and result.assignment.max() < 40
    assert _purity(result.assignment, truth) > 0.75  # random init can merge a pair of blobs; chance is 0.025
    # the stored distance is the squared L2 to the assigned centroid
    d = ((x - result.centroids[result.assignment]) ** 2).sum(1)
    assert np.allclose(d, result.distance, atol=1e-4)
    assert result.sizes().sum() == len(x)


def test_probe_assign_finds_the_exact_nearest_probed_centroid():
    """Low-precision scores only pick candidates: the chosen centroid is the exact fp32 nearest among the probed
    groups' centroids (ties aside), and the returned distance is the exact squared L2."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = x[rng.choice(len(x), 120, replace=False)] + rng.normal(scale=0.01, size=(120, 64)).astype(np.float32)
    starts = np.array([0, 40, 41, 120])  # three groups, one with a single centroid
    probes = np.stack([rng.permutation(3)[:2] for _ in range(len(x))])
    ids, dist = clustering._Backend(False).probe_assign(x, probes, centroids, starts)
    exact = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    allowed = np.zeros_like(exact, dtype=bool)
    for j in range(probes.shape[1]):
        for g in range(3):
            allowed[probes[:, j] == g, starts[g]:starts[g + 1]] = True
    exact[~allowed] = np.inf
    assert allowed[np.arange(len(x)), ids].all()  # only probed groups' centroids
    assert np.allclose(dist, exact[np.arange(len(x)), ids], atol=1e-4)
    best = exact.min(1)
    assert (dist <= best + 1e-4).mean() == 1.0


def test_two_level_probing_and_refinement_tighten_the_fit():
    x, _ = _blobs(25, 200, dim=48, seed=4)
    one = clustering.kmeans(x, 400, method="two_level", nprobe=1, refine=0, seed=2)
    more = clustering.kmeans(x, 400, method="two_level", nprobe=3, refine=2, seed=2)
    assert more.objective < one.objective
    objectives = more.details["objective_per_refine"]
    # each refinement is a Lloyd step: never worse (up to bf16 candidate selection)
    assert all(b <= a + 1e-5 for a, b in zip(objectives, objectives[1:]))
    d = ((x - more.centroids[more.assignment]) ** 2).sum(1)
    assert np.allclose(d, more.distance, atol=1e-4) and more.sizes().sum() == len(x)


def test_two_level_allocation_sums_to_k_and_respects_group_sizes():
    sizes = np.array([500, 3, 0, 97, 1])
    alloc = clustering._allocate(sizes, 50)
    assert alloc.sum() == 50 and (alloc <= sizes).all() and alloc[2] == 0 and (alloc[sizes > 0] >= 1).all()
    assert clustering._allocate(np.array([1, 1, 1]), 2).sum() == 2


def test_kmeans_with_more_clusters_than_rows_and_empty_input():
    x, _ = _blobs(1, 5)
    result = clustering.kmeans(x, 50)
    assert result.k == 5 and sorted(result.assignment.tolist()) == [0, 1, 2, 3, 4]
    assert clustering.kmeans(np.zeros((0, 8), np.float32), 3).k == 0


# ---- the real embedding model ----------------------------------------------------------------------------------

def _questions(path, n):
    with open(path) as fh:
        return [json.loads(line)["question"] for line, _ in zip(fh, range(n))]


def test_real_minilm_embeddings_unit_norm_and_bf16_matches_fp32():
    from iimed_assets.resources.embedder import Embedder

    texts = _questions(SAMPLE_DIR / "mmlu_all" / "test_other.jsonl", 24) + ["", "a"]  # bundled (first 120 rows)
    fast = Embedder().encode(texts)
    exact = Embedder(precision="fp32").encode(texts)
    assert fast.shape == (26, 384) and fast.dtype == np.float32
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (fast * exact).sum(1).min() >= 0.99
    # meaning: a medical question is nearer another medical question than a maths one
    med, med2, maths = Embedder(precision="fp32").encode([
        "What is the first-line treatment for anaphylaxis?",
        "Which drug is given first in a severe allergic reaction?",
        "Solve for x: 3x + 7 = 22."])
    assert med @ med2 > med @ maths + 0.2


# ---- the assets, on the bundled sample ------------------------------------------------------------------------

def _answer(call, label: str, reasoning: str | None = None):
    """The classifier's reply in the format asked for: the label's JSON under a schema, else `Domain: X`."""
    from iimed_assets.testing.openai_loopback import Reply

    if call.response_schema is not None:
        assert label in call.response_schema["properties"]["domain"]["enum"]
        return Reply.json({"domain": label}, reasoning=reasoning)
    return Reply(contents=[f"Domain: {label}"], reasoning=reasoning)


def _scripted_classifier(call):
    """A boundary fake for the LLM: clinical vignettes are Medical, everything else Mathematics."""
    question = call.last_user.split("</question>")[0]
    medical = any(w in question.lower() for w in ("year-old", "patient", "clinical", "disease", "diagnosis"))
    return _answer(call, "Medical" if medical else "Mathematics")


def _section3(warehouse_path, llm, partition="synthetic_1", domain_config=None):
    from iimed_assets.assets.r1 import r1_cluster_domains, r1_clusters, r1_medical_traces, r1_prompt_embeddings
    from iimed_assets.assets.sources import r1_trace_rows
    from iimed_assets.resources.embedder import Embedder

    resources = {"warehouse": warehouse_from_env(), "catalog": catalog_from_env(), "embedder": Embedder(), "classifier": llm}
    results = {}
    with dg.instance_for_test() as instance:
        for asset, key in [(r1_trace_rows, partition), (r1_prompt_embeddings, partition), (r1_clusters, None),
                           (r1_cluster_domains, None), (r1_medical_traces, None)]:
            run_config = {"ops": {"r1_cluster_domains": {"config": domain_config}}} \
                if asset is r1_cluster_domains and domain_config else None
            result = dg.materialize([asset], partition_key=key, instance=instance, resources=resources,
                                    run_config=run_config)
            assert result.success
            for check in result.get_asset_check_evaluations():
                assert check.passed or check.severity == dg.AssetCheckSeverity.WARN, (check.check_name, check.metadata)
            results[asset.key.to_user_string()] = result
    return warehouse_from_env(), results


def test_domain_filter_assets_keep_medical_clusters(warehouse_path):
    from iimed_assets.resources.llm import OpenAICompatibleLLM
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI

    with LoopbackOpenAI(script=_scripted_classifier) as server:
        warehouse, results = _section3(warehouse_path, OpenAICompatibleLLM(base_url=server.url, model="scripted"))
        calls = server.requests
    rows = warehouse.fetch_one("SELECT count(*) FROM r1_trace_rows")[0]
    k = warehouse.fetch_one("SELECT count(*) FROM r1_centroids")[0]
    assert rows == 100 and k == round(rows / 40)  # the stated default rule
    # the embeddings check and the cluster check ran and passed (asserted in _section3); vectors are stored
    assert warehouse.fetch_one("SELECT count(*), min(array_length(embedding)) FROM r1_prompt_embeddings") == (100, 384)
    # the voters are the 10 prompts nearest each centroid, by the stored distances
    assert calls == warehouse.fetch_one("SELECT count(*) FROM r1_domain_votes")[0] == 10 * k
    nearest = warehouse.fetch("SELECT cluster_id, list(id ORDER BY distance, source, id)[:10] FROM r1_clusters "
                              "GROUP BY 1 ORDER BY 1")
    voted = warehouse.fetch("SELECT cluster_id, list(id ORDER BY rank) FROM r1_domain_votes GROUP BY 1 ORDER BY 1")
    assert nearest == voted
    # kept = exactly the rows of Medical/Biology clusters; the rest are ledgered as domain:<label>
    kept_expected = warehouse.fetch_one(
        "SELECT count(*) FROM r1_clusters c JOIN r1_cluster_domains d USING (cluster_id) WHERE d.keep")[0]
    kept = warehouse.fetch_one("SELECT count(*) FROM r1_medical_traces")[0]
    ledger = warehouse.ledger_counts("r1_medical_traces")
    assert kept == kept_expected and kept + sum(ledger.values()) == rows
    assert set(ledger) <= {"domain:Mathematics"} and kept > 0
    # the clinical R1 traces (MedQA) are kept, GSM8K is not: the clusters separate them
    medqa_kept, gsm_kept = warehouse.fetch_one(
        "SELECT count(*) FILTER (WHERE t.prompt ILIKE '%year-old%'), count(*) FILTER (WHERE t.prompt NOT ILIKE "
        "'%year-old%') FROM r1_medical_traces t")
    assert medqa_kept >= 30 and gsm_kept <= 6, (medqa_kept, gsm_kept)  # of 40 and 60, with only K=2
    md = results["r1_cluster_domains"].asset_materializations_for_node("r1_cluster_domains")[0].metadata
    assert md["medical_biology_clusters"].value >= 1 and "png" in md["domains"].value
    assert "cluster_id" in {c.name for c in results["r1_medical_traces"].asset_materializations_for_node(
        "r1_medical_traces")[0].metadata["dagster/column_schema"].value.columns}


def test_every_cluster_labelled_check_fails_when_a_cluster_has_no_votes(warehouse_path):
    """The check is real: a cluster whose nearest prompts vanished from r1_trace_rows gets no label."""
    from iimed_assets.assets.r1 import r1_cluster_domains
    from iimed_assets.resources.llm import OpenAICompatibleLLM
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI

    with LoopbackOpenAI(script=_scripted_classifier) as server:
        llm = OpenAICompatibleLLM(base_url=server.url, model="scripted")
        warehouse, _ = _section3(warehouse_path, llm)
        before = warehouse.fetch("SELECT * FROM r1_cluster_domains ORDER BY cluster_id")
        with warehouse.connect() as con:
            con.execute("DELETE FROM r1_trace_rows WHERE id IN (SELECT id FROM r1_clusters WHERE cluster_id = 0)")
        with dg.instance_for_test() as instance:
            result = dg.materialize([r1_cluster_domains], resources={"warehouse": warehouse_from_env(), "classifier": llm},
                                    raise_on_error=False, instance=instance)
            check = logged_checks(instance, result.run_id)["every_cluster_labelled"]
    assert not result.success and not check.passed and check.metadata["unlabelled_clusters"].value == 1
    # checked on the staged labels: the blocked swap left the previous labels as they were (issue 21.1)
    assert warehouse.fetch("SELECT * FROM r1_cluster_domains ORDER BY cluster_id") == before


def test_real_smollm2_labels_clusters(warehouse_path):
    """The embedded LLM end to end (2 voters per cluster to keep it short): its answers are grammar-constrained
    to the label list, so every vote is a label, never unknown."""
    from iimed_assets.resources.llm import LlamaCppLLM

    warehouse, results = _section3(warehouse_path, LlamaCppLLM(n_ctx=2048), domain_config={"voters": 2})
    labels = warehouse.fetch("SELECT label, answer FROM r1_domain_votes")
    assert len(labels) == 2 * warehouse.fetch_one("SELECT count(*) FROM r1_centroids")[0]
    assert all(answer and not answer.startswith("error") for _, answer in labels)
    assert all(label in domains.DOMAINS for label, _ in labels), labels
    assert warehouse.fetch_one("SELECT count(*) FROM r1_cluster_domains WHERE domain IS NULL")[0] == 0
    md = results["r1_cluster_domains"].asset_materializations_for_node("r1_cluster_domains")[0].metadata
    assert md["unknown_answers"].value == 0 and md["structured_answers"].value == len(labels)


def test_embedding_classifier_labels_clusters_and_keeps_the_medical_ones(warehouse_path):
    """The laptop profile's classifier (MiniLM nearest exemplars) on the bundled R1 sample: the clinical traces
    stay, GSM8K does not, and no vote is unknown."""
    from iimed_assets.resources.llm import EmbeddingClassifier

    warehouse, results = _section3(warehouse_path, EmbeddingClassifier())
    md = results["r1_cluster_domains"].asset_materializations_for_node("r1_cluster_domains")[0].metadata
    assert md["unknown_answers"].value == 0 and md["classifier/model"].value == "embedding:all-MiniLM-L6-v2"
    labels = dict(warehouse.fetch("SELECT label, count(*) FROM r1_domain_votes GROUP BY 1"))
    assert set(labels) <= set(domains.DOMAINS) and labels.get("Medical", 0) > 0
    medqa_kept, gsm_kept = warehouse.fetch_one(
        "SELECT count(*) FILTER (WHERE t.prompt ILIKE '%year-old%'), count(*) FILTER (WHERE t.prompt NOT ILIKE "
        "'%year-old%') FROM r1_medical_traces t")
    assert medqa_kept >= 30 and gsm_kept <= 6, (medqa_kept, gsm_kept)  # of 40 MedQA and 60 GSM8K, with K=2-3


def test_reasoning_classifier_thinks_before_its_label(warehouse_path):
    """A reasoning model as classifier: its thinking (inline <think>, or a server's reasoning_content) names
    other domains, and only the answer after it counts."""
    from iimed_assets.resources.llm import OpenAICompatibleLLM
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI, Reply

    def thinking(call):
        label = _scripted_classifier(call).contents[0]
        if call.number % 2:  # inline, with a misleading label inside the reasoning
            return Reply(contents=['<think>Could be Law, or {"domain": "Law"}?</think>' + label])
        return _answer(call, json.loads(label)["domain"], reasoning="Maybe Physics? No.")

    with LoopbackOpenAI(script=thinking) as server:
        warehouse, _ = _section3(warehouse_path, OpenAICompatibleLLM(base_url=server.url, model="thinker",
                                                                     max_tokens=2048))
        assert all(c.body["max_tokens"] == 2048 for c in server.calls)  # the role's budget leaves room to think
    labels = {label for (label,) in warehouse.fetch("SELECT DISTINCT label FROM r1_domain_votes")}
    assert labels <= {"Medical", "Mathematics"} and "Medical" in labels


def test_mixed_clusters_and_per_prompt_selection_within_budget():
    from iimed_assets.core.domains import is_mixed, keep_share, select_mixed_for_per_prompt

    assert is_mixed(["Medical", "Mathematics", UNKNOWN])
    assert not is_mixed(["Medical", "Biology", UNKNOWN])  # Medical vs Biology is no disagreement on keep
    assert not is_mixed(["Law", "Mathematics"]) and not is_mixed([UNKNOWN, UNKNOWN])
    assert keep_share(["Medical", "Law", UNKNOWN, "Biology"]) == 2 / 3 and keep_share([UNKNOWN]) is None
    mixed = [(1, 0.5, 50, 10), (2, 0.1, 12, 10), (3, 0.4, 30, 10), (4, 0.5, 200, 10)]
    # 5/5 splits first (smaller first), then 4/6, then 1/9; a cluster that does not fit is skipped
    assert select_mixed_for_per_prompt(mixed, 60) == [1, 3]  # 40 + 20 extra calls; cluster 4 (190) never fits
    assert select_mixed_for_per_prompt(mixed, 62) == [1, 2, 3]
    assert select_mixed_for_per_prompt(mixed, 0) == []
    assert select_mixed_for_per_prompt(mixed, float("inf")) == [1, 2, 3, 4]


def _split_classifier(call):
    """A boundary fake that splits every cluster: even-length questions are Medical, odd ones Law."""
    question = call.last_user.split("</question>")[0]
    return _answer(call, "Medical" if len(question) % 2 == 0 else "Law")


@pytest.mark.parametrize("budget", [10.0, 0.0])
def test_mixed_clusters_get_per_prompt_labels_within_the_budget(warehouse_path, budget):
    from iimed_assets.resources.llm import OpenAICompatibleLLM
    from iimed_assets.testing.openai_loopback import LoopbackOpenAI

    with LoopbackOpenAI(script=_split_classifier) as server:
        warehouse, results = _section3(warehouse_path, OpenAICompatibleLLM(base_url=server.url, model="scripted"),
                                       domain_config={"per_prompt_budget": budget})
        calls = server.requests
    rows, k = 100, warehouse.fetch_one("SELECT count(*) FROM r1_centroids")[0]
    mixed, per_prompt, per_prompt_rows = warehouse.fetch_one(
        "SELECT count(*) FILTER (WHERE mixed), count(*) FILTER (WHERE per_prompt), "
        "coalesce(sum(size) FILTER (WHERE per_prompt), 0) FROM r1_cluster_domains")
    assert mixed >= 1  # the split classifier splits the voters of (almost) every cluster
    md = results["r1_cluster_domains"].asset_materializations_for_node("r1_cluster_domains")[0].metadata
    labelled = warehouse.fetch_one("SELECT count(*) FROM r1_prompt_domains")[0]
    if budget:
        # budget 10 = 10 extra calls per voter call: k = round(100 / 40) = 2 clusters, up to 20 voter calls, so up
        # to 200 extra calls for 100 rows: every mixed cluster fits
        assert per_prompt == mixed and labelled == per_prompt_rows and md["mixed_clusters_over_budget"].value == 0
        assert calls == 10 * k + md["per_prompt_calls"].value == 10 * k + per_prompt_rows - 10 * per_prompt
    else:
        assert per_prompt == 0 and labelled == 0 and calls == 10 * k
    expected = warehouse.fetch_one(
        "SELECT count(*) FROM r1_clusters c JOIN r1_cluster_domains d USING (cluster_id) "
        "LEFT JOIN r1_prompt_domains p USING (source, id) "
        "WHERE (d.per_prompt AND p.label = 'Medical') OR (NOT d.per_prompt AND d.keep)")[0]
    kept = warehouse.fetch_one("SELECT count(*) FROM r1_medical_traces")[0]
    ledger = warehouse.ledger_counts("r1_medical_traces")
    assert kept == expected and kept + sum(ledger.values()) == rows and set(ledger) <= {"domain:Law"}
    if budget:  # in a per-prompt cluster each kept row is one the classifier itself called Medical
        assert warehouse.fetch_one(
            "SELECT count(*) FROM r1_medical_traces m JOIN r1_prompt_domains p USING (source, id) "
            "WHERE p.label <> 'Medical'")[0] == 0
        assert 0 < kept < rows
