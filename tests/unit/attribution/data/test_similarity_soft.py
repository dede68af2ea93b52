"""SimilarityAttributor and soft attribution: references, known-answer calibration, stores, bad queries."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genprov.attribution.data import (
    FeatureMapper,
    PixelExtractor,
    RandomCNNExtractor,
    SimilarityAttributor,
    SimilarityConfig,
    SoftCalibration,
    TuningConfig,
    evaluate_soft,
    expected_calibration_error,
    fit_soft_calibration,
    remaining_influence,
    soft_attribution,
    soft_nll,
    top_k,
)
from genprov.data import load_dataset
from genprov.exceptions import ConfigError, DataError, NotFittedError, StoreMismatchError
from genprov.results import DataAttributionResult
from genprov.storage import INDEX_FILE, FeatureStore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", n=150, seed=0)
    return ds.images[:120], ds.images[120:]


def _reference_soft(scores: np.ndarray, inv_tau: float, bias: float) -> np.ndarray:
    w = np.maximum(np.exp(inv_tau * (scores - scores.max(axis=1, keepdims=True))) + bias, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def _synthetic(inv_tau: float, bias: float, n_q: int, n: int, seed: int, n_pos: int = 1):
    """Scores ~ U(0, 1); each query's exemplars drawn from the soft attribution with the true scalars."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_q, n, generator=g, dtype=torch.float64)
    p = torch.from_numpy(_reference_soft(scores.numpy(), inv_tau, bias))
    positives = [torch.multinomial(p[i], n_pos, replacement=True, generator=g).numpy() for i in range(n_q)]
    return scores, positives


# ------------------------------------------------------------------------------------------ soft attribution


def test_soft_attribution_and_nll_match_references() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(5, 9))
    for inv_tau, bias in ((3.0, 0.0), (10.0, -0.4), (1.0, 0.2)):
        p = soft_attribution(scores, inv_tau, bias).numpy()
        np.testing.assert_allclose(p, _reference_soft(scores, inv_tau, bias), rtol=1e-12)
        order = np.argsort(-scores, axis=1)  # exemplars among the best matches (non-zero shares)
        if bias >= 0:  # every item keeps a share: several exemplars, repeats and low-ranked ones
            positives = [order[0, [0, 1]], order[1, [5]], order[2, [8]], order[3, [0, 0]], order[4, [0, 1, 2]]]
        else:  # a negative bias zeroes the tail: exemplars among the best matches
            positives = [order[0, [0]], order[1, [0, 0]], order[2, [0]], order[3, [0]], order[4, [0]]]
        assert all(p[q, pos].min() > 0 for q, pos in enumerate(positives))
        ref = np.mean([-np.mean(np.log(p[q, pos])) for q, pos in enumerate(positives)])
        assert soft_nll(scores, positives, inv_tau, bias) == pytest.approx(ref, rel=1e-10)


def test_calibration_recovers_known_scalars() -> None:
    scores, positives = _synthetic(8.0, -0.2, n_q=2000, n=30, seed=1)
    fit = fit_soft_calibration(scores, positives)
    assert fit.inv_tau == pytest.approx(8.0, rel=0.15)
    assert fit.bias == pytest.approx(-0.2, abs=0.05)
    assert fit.nll <= soft_nll(scores, positives, 8.0, -0.2) + 1e-9  # the MLE beats the truth on its own data
    # temperature only (bias 0), several exemplars per query
    scores, positives = _synthetic(5.0, 0.0, n_q=1000, n=30, seed=2, n_pos=3)
    fit = fit_soft_calibration(scores, positives, fit_bias=False)
    assert fit.bias == 0.0 and fit.inv_tau == pytest.approx(5.0, rel=0.1)


def test_calibration_lowers_held_out_nll() -> None:
    scores, positives = _synthetic(12.0, -0.1, n_q=600, n=25, seed=3)
    fit = fit_soft_calibration(scores[:300], positives[:300])
    default = SoftCalibration(inv_tau=20.0, bias=0.0)
    held_out = (scores[300:], positives[300:])
    assert evaluate_soft(*held_out, fit)["nll"] < evaluate_soft(*held_out, default)["nll"]
    report = evaluate_soft(*held_out, fit, top_n=5)
    assert set(report) == {"nll", "ece", "remaining_influence", "exemplar_mass"}
    assert 0 <= report["ece"] < 0.1 and 0 <= report["remaining_influence"] <= 1


def test_ece_and_remaining_influence_by_hand() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], dtype=torch.float64)
    positives = [np.array([0]), np.array([1])]
    # top-2 per query: confidences 0.7 (hit), 0.2 (miss), 0.5 (miss), 0.3 (hit); 2 bins: [0, .5) and [.5, 1]
    low = abs((0.2 + 0.3) / 2 - 0.5)
    high = abs((0.7 + 0.5) / 2 - 0.5)
    assert expected_calibration_error(p, positives, top_n=2, n_bins=2) == pytest.approx(0.5 * low + 0.5 * high)
    np.testing.assert_allclose(remaining_influence(p, 2).numpy(), [0.1, 0.2])
    # two exemplars: confidence min(1, 2 p)
    assert expected_calibration_error(p[:1], [np.array([0, 1])], top_n=1, n_bins=1) == pytest.approx(0.0)


def test_soft_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="inv_tau"):
        soft_attribution(np.zeros((1, 3)), 0.0)
    with pytest.raises(ConfigError, match="bias"):
        soft_attribution(np.zeros((1, 3)), 1.0, -1.5)
    with pytest.raises(DataError, match="no positives"):
        soft_nll(np.zeros((1, 3)), [np.array([], dtype=np.int64)], 1.0)
    with pytest.raises(DataError, match=r"in \[0, 3\)"):
        fit_soft_calibration(np.zeros((1, 3)), [np.array([3])])
    with pytest.raises(DataError, match="NaN"):
        soft_attribution(np.full((1, 3), np.nan), 1.0)


# ------------------------------------------------------------------------------------------ the attributor


def test_scores_and_attribute_against_brute_force(data) -> None:
    train, queries = data
    sim = SimilarityAttributor(PixelExtractor(), SimilarityConfig(chunk_rows=17, inv_tau=7.0, bias=-0.3)).fit(train)
    t = F.normalize(train.flatten(1).double(), dim=1)
    q = F.normalize(queries.flatten(1).double(), dim=1)
    full = (q @ t.T).numpy()
    np.testing.assert_allclose(sim.scores(queries).numpy(), full, rtol=1e-5, atol=1e-5)
    result = sim.attribute(queries, k=6)
    ref_i, ref_s = top_k(torch.from_numpy(full), 6)
    np.testing.assert_array_equal(result.indices, ref_i.numpy())
    np.testing.assert_allclose(result.scores, ref_s.numpy(), rtol=1e-5, atol=1e-5)
    # soft shares use the full denominator over all training images
    soft_full = _reference_soft(full, 7.0, -0.3)
    np.testing.assert_allclose(result.soft, np.take_along_axis(soft_full, ref_i.numpy(), 1), rtol=2e-5, atol=1e-8)
    assert np.all(result.soft.sum(axis=1) <= 1 + 1e-9)
    everything = sim.attribute(queries[:3], k=len(train))
    np.testing.assert_allclose(everything.soft.sum(axis=1), 1.0, rtol=1e-9)
    assert result.method == "similarity[pixels]" and result.config["calibration"]["inv_tau"] == 7.0
    np.testing.assert_allclose(sim.soft_scores(queries).numpy(), soft_full, rtol=2e-5, atol=2e-6)


def test_store_matches_memory_resumes_and_round_trips(tmp_path, data) -> None:
    train, queries = data
    memory = SimilarityAttributor(RandomCNNExtractor()).fit(train)
    stored = SimilarityAttributor(RandomCNNExtractor(), SimilarityConfig(shard_size=32)).fit(
        train, store=tmp_path / "idx"
    )
    a, b = memory.attribute(queries, k=5), stored.attribute(queries, k=5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.soft, b.soft, rtol=1e-5)
    # refitting on the same store reuses it without featurizing the training set again
    again = SimilarityAttributor(RandomCNNExtractor(), SimilarityConfig(shard_size=32))
    calls = []
    original = again.featurize
    again.featurize = lambda batch, indices=None: calls.append(len(batch)) or original(batch, indices)  # type: ignore[method-assign]
    again.fit(train, store=tmp_path / "idx")
    assert calls == [1]  # only the probe image that gives the feature dimension
    np.testing.assert_array_equal(again.attribute(queries, k=5).indices, a.indices)
    # result round trip keeps the soft shares
    path = b.save(tmp_path / "result")
    loaded = DataAttributionResult.load(path)
    np.testing.assert_allclose(loaded.soft, b.soft)
    # add(): new training rows are searchable and get the next indices
    rows = stored.add(queries[:2])
    assert rows == range(120, 122) and stored.n_train_ == 122
    assert stored.attribute(queries[:2], k=1).indices[:, 0].tolist() == [120, 121]
    assert memory.add(queries[:2]) == range(120, 122)
    assert memory.attribute(queries[:2], k=1).indices[:, 0].tolist() == [120, 121]


def test_store_mismatches_are_named(tmp_path, data) -> None:
    train, _ = data
    SimilarityAttributor(PixelExtractor()).fit(train, store=tmp_path / "idx")
    with pytest.raises(StoreMismatchError, match="extractor"):
        SimilarityAttributor(RandomCNNExtractor()).fit(train, store=tmp_path / "idx")
    with pytest.raises(StoreMismatchError, match="another training set"):
        SimilarityAttributor(PixelExtractor()).fit(train.flip(0), store=tmp_path / "idx")
    with pytest.raises(ConfigError, match="not a FeatureStore"):
        SimilarityAttributor(PixelExtractor()).fit(train, store=FeatureStore(tmp_path / "fs"))
    (tmp_path / "idx" / INDEX_FILE).write_text("{broken")
    with pytest.raises(DataError, match="corrupted"):
        SimilarityAttributor(PixelExtractor()).fit(train, store=tmp_path / "idx")


def test_bad_queries_get_clear_errors(data) -> None:
    train, queries = data
    sim = SimilarityAttributor("pixels")
    with pytest.raises(NotFittedError, match="fit"):
        sim.attribute(queries)
    sim.fit(train)
    with pytest.raises(DataError, match=r"\(C, H, W\) = \(1, 8, 8\).*Resize"):
        sim.attribute(torch.zeros(2, 1, 16, 16))
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*channels"):
        sim.attribute(torch.zeros(2, 3, 8, 8))
    with pytest.raises(DataError, match=r"\(n, C, H, W\)"):
        sim.attribute(torch.zeros(1, 8, 8))
    with pytest.raises(DataError, match=r"\[-1"):
        sim.attribute(torch.full((1, 1, 8, 8), 5.0))
    with pytest.raises(ConfigError, match="k must be"):
        sim.attribute(queries, k=0)
    with pytest.raises(DataError, match="empty"):
        SimilarityAttributor("pixels").fit(train[:0])
    with pytest.raises(ConfigError, match="store folder"):
        SimilarityAttributor("pixels", SimilarityConfig(search="faiss")).fit(train)


def test_mapper_towers_are_used(data) -> None:
    train, queries = data
    ext = PixelExtractor()
    g = torch.Generator().manual_seed(0)
    tq = ext.extract(train[:40]) + 0.05 * torch.randn(40, 64, generator=g)
    mapper = FeatureMapper(TuningConfig(max_steps=10, batch_size=16, n_pool_negatives=16)).fit(
        tq, [np.array([i]) for i in range(40)], ext.extract(train)
    )
    sim = SimilarityAttributor(ext, mapper=mapper).fit(train)
    expected = mapper.map_queries(ext.extract(queries)) @ mapper.map_train(ext.extract(train)).T
    torch.testing.assert_close(sim.scores(queries), expected, rtol=1e-5, atol=1e-5)
    assert sim.method == "similarity[pixels+tuned]"


def test_calibrate_and_evaluate_on_images(data) -> None:
    train, _ = data
    g = torch.Generator().manual_seed(1)
    noisy = (train[:60] + 0.4 * torch.randn(60, 1, 8, 8, generator=g)).clamp(-1, 1)
    positives = [np.array([i]) for i in range(60)]
    sim = SimilarityAttributor("pixels").fit(train)
    before = sim.evaluate_soft(noisy[30:], positives[30:])
    fit = sim.calibrate(noisy[:30], positives[:30])
    assert sim.calibration_ is fit and fit.n_queries == 30
    after = sim.evaluate_soft(noisy[30:], positives[30:])
    assert after["nll"] < before["nll"]


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed (genprov[faiss])")
def test_faiss_backend_matches_exact_on_small_index(tmp_path, data) -> None:
    train, queries = data
    exact = SimilarityAttributor("pixels").fit(train).attribute(queries, k=5)
    approx = SimilarityAttributor("pixels", SimilarityConfig(search="faiss", n_candidates=40)).fit(
        train, store=tmp_path / "i"
    )
    result = approx.attribute(queries, k=5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(result.indices, exact.indices, strict=True)])
    assert recall >= 0.95
    same = (result.indices == exact.indices).all(axis=1)
    np.testing.assert_allclose(result.soft[same], exact.soft[same], rtol=1e-5)
