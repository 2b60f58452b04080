"""Section 3's GPU paths, run on the CPU: flat torch K-means (the CUDA code, device `cpu`) against faiss flat,
and the embedder's cut / pre-tokenised / length-sorted encoding against sentence-transformers' own encode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iimed_assets.core import clustering, embedding
from iimed_assets.sources.loaders import SAMPLE_DIR


def _blobs(n: int, topics: int, seed: int, dim: int = 384) -> np.ndarray:
    """Unit-norm Gaussian topics of uneven (Pareto) sizes, like sentence embeddings (as bench/kmeans.py)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.pareto(1.5, size=topics) + 1
    labels = rng.choice(topics, size=n, p=weights / weights.sum())
    x = centers[labels] + rng.normal(scale=0.04, size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, k, topics, seed", [(6000, 50, 100, 0), (6000, 50, 100, 1), (10000, 300, 600, 2)])
def test_torch_kmeans_matches_faiss_flat_from_the_same_start(n, k, topics, seed):
    import faiss

    x = _blobs(n, topics, seed=10 + seed)
    start = x[np.sort(np.random.default_rng(seed).choice(n, k, replace=False))].copy()
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, max_points_per_centroid=clustering.MAX_POINTS_PER_CENTROID,
                      min_points_per_centroid=1)
    km.train(x, init_centroids=start)
    _, faiss_dist = clustering.assign(x, km.centroids)
    ours = clustering.torch_flat(x, k, niter=20, seed=seed, device="cpu", init=start)
    assert abs(ours.objective / float(faiss_dist.mean()) - 1) < 0.01
    assert ours.k == k and ours.assignment.min() >= 0 and ours.assignment.max() < k


def test_torch_kmeans_is_deterministic_and_its_final_assignment_exact():
    x = _blobs(8000, 400, seed=3)
    a = clustering.kmeans(x, 200, backend="torch", device="cpu", seed=5)
    b = clustering.kmeans(x, 200, backend="torch", device="cpu", seed=5)
    c = clustering.kmeans(x, 200, backend="torch", device="cpu", seed=6)
    assert a.details["backend"] == "torch-cpu" and a.method == "flat"
    assert np.array_equal(a.assignment, b.assignment) and np.array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)  # the seed matters
    # the reported assignment and distance are the exact fp32 nearest centroid (faiss exact search)
    ids, dist = clustering.assign(x, a.centroids)
    assert (ids == a.assignment).mean() == 1.0
    np.testing.assert_allclose(a.distance, dist, atol=1e-5)
    objective_by_iter = a.details["objective_per_iter"]
    assert objective_by_iter[-1] < objective_by_iter[0] and len(objective_by_iter) == 20


def test_torch_kmeans_score_blocks_bound_memory_and_give_the_same_fit():
    x = _blobs(3000, 60, seed=4)
    whole = clustering.torch_flat(x, 40, seed=1, device="cpu")
    blocked = clustering.torch_flat(x, 40, seed=1, device="cpu", score_bytes=256 * 40 * 2)  # 256-row blocks
    assert blocked.details["batch_rows"] == 256 < whole.details["batch_rows"]
    assert np.array_equal(whole.assignment, blocked.assignment)
    np.testing.assert_allclose(whole.centroids, blocked.centroids, atol=1e-6)


def test_segment_sums_equal_index_add():
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(1000, 16)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 50, size=1000))
    ids[ids == 7] = 8  # an empty cluster in the middle
    expected = torch.zeros((60, 16), dtype=torch.float64).index_add_(0, ids, x.double()).float()
    for rows in (1, 37, 1000):
        got = clustering._segment_sums(torch, x, ids, 60, rows)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert float(got[7].abs().sum()) == 0.0 and float(got[55:].abs().sum()) == 0.0


def test_empty_clusters_are_reseeded():
    x = _blobs(500, 5, seed=2)
    start = np.repeat(x[:1], 20, axis=0)  # 20 identical centroids: 19 of them are empty after one step
    result = clustering.torch_flat(x, 20, niter=5, seed=0, device="cpu", init=start)
    assert result.details["reseeded"] >= 19
    assert len(np.unique(result.assignment)) > 5


def test_backend_selection(monkeypatch):
    monkeypatch.setattr(clustering, "gpu_available", lambda: False)
    monkeypatch.setattr(clustering, "_cuda_available", lambda: True)
    assert clustering.select_backend() == clustering.KMeansBackend("torch", "cuda")
    assert clustering.select_backend().name == "torch-gpu"
    assert clustering.select_backend("faiss").name == "faiss-cpu"
    monkeypatch.setattr(clustering, "gpu_available", lambda: True)
    assert clustering.select_backend().name == "faiss-gpu"  # faiss-gpu stays the accelerator when installed
    monkeypatch.setattr(clustering, "gpu_available", lambda: False)
    monkeypatch.setattr(clustering, "_cuda_available", lambda: False)
    assert clustering.select_backend() == clustering.KMeansBackend("faiss", "cpu")
    assert clustering.select_backend("torch").device == "cpu"
    with pytest.raises(ValueError):
        clustering.select_backend("sklearn")
    with pytest.raises(ValueError, match="flat only"):
        clustering.kmeans(_blobs(100, 4, seed=0), 4, method="two_level", backend="torch", device="cpu")


# ---- embeddings ------------------------------------------------------------------------------------------------

def _sample_texts() -> list[str]:
    """Real texts of the bundled sample: long PubMedQA abstracts, MedXpertQA vignettes, R1 prompts, short questions."""
    texts = []
    for rel, fields in [("pubmedqa/ori_pqal.jsonl", ("QUESTION",)), ("medxpertqa/text_reasoning_test.jsonl", ("question",)),
                        ("medical_o1_demo/demo_data.jsonl", ("Complex_CoT", "Question")),
                        ("chatdoctor/chatdoctor5k.jsonl", ("input",))]:
        for line in open(SAMPLE_DIR / rel, encoding="utf-8"):
            r = json.loads(line)
            texts += [r[f] for f in fields if isinstance(r.get(f), str)]
            if isinstance(r.get("CONTEXTS"), list):
                texts.append(" ".join(r["CONTEXTS"]))
    return texts


@pytest.fixture(scope="module")
def minilm():
    from iimed_assets.resources.embedder import Embedder

    return Embedder()._model()


def test_cut_texts_tokenise_exactly_like_whole_texts(minilm):
    texts = [t for t in _sample_texts() if len(t) > 2100][:300]
    assert len(texts) >= 100  # long texts exist, so the cut really happens
    cut = [embedding.cut_for_tokenizer(t, 256) for t in texts]
    assert all(was_cut for _, was_cut in cut)
    whole = minilm.preprocess(texts)
    ours = minilm.preprocess([c for c, _ in cut])
    assert all(int(v) == 256 for v in ours["attention_mask"].sum(1))
    assert bool((whole["input_ids"] == ours["input_ids"]).all())


def test_cut_keeps_short_texts_and_texts_without_spaces():
    assert embedding.cut_for_tokenizer("short text", 256) == ("short text", False)
    cjk = "患者" * 3000
    assert embedding.cut_for_tokenizer(cjk, 256) == (cjk, False)
    text, was_cut = embedding.cut_for_tokenizer("word " * 1000, 256)
    assert was_cut and text.endswith("word") and len(text) < len("word " * 1000)


def test_rust_tokenizer_equals_the_models_preprocessing(minilm):
    fast = embedding.RustTokenizer.for_model(minilm)
    assert fast is not None
    texts = _sample_texts()[::7][:600] + ["  padded  ", "Ünïcödé", "患者男性，45岁。", "a " * 600]
    for start in range(0, len(texts), 128):
        ref = minilm.preprocess(texts[start:start + 128])
        ours = fast(texts[start:start + 128])
        assert set(ours) == set(ref)
        for key, value in ours.items():
            if hasattr(value, "shape"):
                assert bool((value == ref[key]).all()), key


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_equals_sentence_transformers(minilm, workers):
    texts = _sample_texts()[::11][:160]
    seen = []
    ours = embedding.encode(minilm, texts, batch_size=16, device="cpu", precision="fp32", workers=workers,
                            progress=lambda done, total, s: seen.append((done, total)), progress_every=50)
    reference = minilm.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    assert seen[-1] == (len(texts), len(texts)) and len(seen) >= 3
    assert embedding.encode(minilm, [], batch_size=16, device="cpu", precision="fp32").shape == (0, 384)
