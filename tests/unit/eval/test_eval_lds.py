"""LDS and counterfactual evaluation (``genprov.eval.lds``): oracles, held-out lambda, ceiling, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genprov.eval.lds import (
    EvalDraws,
    LDSBenchmark,
    counterfactual_metrics,
    counterfactual_removals,
    evaluate_lds,
    measure_losses,
    noise_ceiling,
    pixel_similarity,
)
from genprov.exceptions import DataError
from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_loss
from genprov.report import Gallery
from genprov.utils.seeding import numpy_rng


def _bench(n_q: int = 8, n_train: int = 10, n_subsets: int = 12, seed: int = 0) -> tuple[LDSBenchmark, np.ndarray]:
    """A benchmark whose losses are exactly linear in hidden true scores (plus tiny seed noise)."""
    rng = numpy_rng(seed, "lds-bench")
    true = rng.standard_normal((n_q, n_train))
    masks = rng.random((n_subsets, n_train)) < 0.5
    clean = -(masks.astype(float) @ true.T)  # loss falls with positive influence
    losses = np.stack([clean + 1e-6 * rng.standard_normal(clean.shape) for _ in range(2)], axis=1)
    kinds = np.array(["real"] * (n_q // 2) + ["generated"] * (n_q - n_q // 2))
    bench = LDSBenchmark(masks, losses, np.zeros((n_q, 1, 2, 2), np.float32), kinds, np.zeros(n_q, bool))
    return bench.with_validation_split(0), true


def test_true_scores_reach_lds_one_and_lambda_is_chosen_on_validation_queries() -> None:
    bench, true = _bench()
    assert bench.val.sum() == 4 and set(bench.kinds[bench.val]) == {"real", "generated"}
    noisy = true + numpy_rng(1, "noise").standard_normal(true.shape) * 3
    sweep = np.stack([noisy, true, -true])  # only the middle "lambda" is right
    result = evaluate_lds({"TRAK": sweep, "pixel similarity": -true[None]}, bench, dampings=[1.0, 2.0, 5.0], n_boot=50)
    for kind in ("real", "generated"):
        row = result["methods"][kind]["TRAK"]
        assert row["relative_damping"] == 2.0 and row["lds"]["mean"] == pytest.approx(1.0)
        assert result["methods"][kind]["pixel similarity"]["lds"]["mean"] == pytest.approx(-1.0)
        assert result["noise_ceiling"][kind]["mean"] > 0.99
        assert result["sweep"][kind]["TRAK"]["val"][2] == pytest.approx(-1.0)
        assert result["paired"][kind]["TRAK - pixel similarity"]["mean"] == pytest.approx(2.0)


def test_the_reported_lds_never_uses_the_test_queries_to_pick_lambda() -> None:
    bench, true = _bench()
    good_on_test_only = np.where(bench.val[:, None], -true, true)  # right on test queries, wrong on validation
    sweep = np.stack([true, good_on_test_only])
    row = evaluate_lds({"TRAK": sweep}, bench, dampings=[1.0, 2.0], n_boot=20)["methods"]["real"]["TRAK"]
    assert row["relative_damping"] == 1.0  # index 1 is best on test but worst on validation


def test_noise_ceiling_needs_two_seeds() -> None:
    bench, _ = _bench()
    assert noise_ceiling(bench.losses[:, :1], np.arange(8), seed=0, n_boot=10) is None


def test_benchmark_round_trip_and_errors(tmp_path) -> None:
    bench, _ = _bench()
    bench.save(tmp_path / "b.npz")
    loaded = LDSBenchmark.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(loaded.masks, bench.masks)
    np.testing.assert_array_equal(loaded.val, bench.val)
    assert loaded.kinds.tolist() == bench.kinds.tolist()
    np.save(tmp_path / "x.npy", np.zeros(3))
    np.savez(tmp_path / "bad.npz", masks=bench.masks)
    with pytest.raises(DataError, match="lacks"):
        LDSBenchmark.load(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="does not exist"):
        LDSBenchmark.load(tmp_path / "none.npz")


def test_measured_losses_equal_the_training_loss_per_draw() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DDPM(DDPMConfig.preset("tiny", num_train_timesteps=50)).eval()
    queries = torch.rand(3, 1, 8, 8) * 2 - 1
    draws = EvalDraws.make(queries, 4, 50, seed=0)
    assert draws.t.shape == (3, 4) and int(draws.t.max()) < 50
    losses = measure_losses(model, draws, batch_size=5)
    with torch.no_grad():
        expected = [
            np.mean(
                [
                    float(ddpm_loss(model, queries[q : q + 1], draws.noise[q, j : j + 1], draws.t[q, j : j + 1]))
                    for j in range(4)
                ]
            )
            for q in range(3)
        ]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert draws.fingerprint() == EvalDraws.make(queries, 4, 50, seed=0).fingerprint()


def test_pixel_similarity_and_gallery() -> None:
    train = torch.rand(6, 1, 8, 8) * 2 - 1
    scores = pixel_similarity(train[[2]], train)
    assert scores.argmax() == 2 and scores[0, 2] == 0
    gallery = Gallery.influence(train[2], train, scores[0], k_positive=3, k_negative=2)
    assert gallery.rows[0].items[0].caption == "#2" and len(gallery.rows[1].items) == 2


def test_counterfactual_removals_take_each_methods_top_k_and_a_seeded_random_k() -> None:
    scores = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0], [1.0, 1.0, 0.0, 9.0]])
    removals = counterfactual_removals({"A": scores, "B": -scores}, [2, 0], k=2, n_train=4, seed=3)
    assert list(removals) == ["random", "A", "B"]
    np.testing.assert_array_equal(removals["A"][0], [3, 0])  # query column 2: 9 first, then the tie 1, 1 by index
    np.testing.assert_array_equal(removals["A"][1], [1, 3])
    np.testing.assert_array_equal(removals["B"][1], [0, 2])
    again = counterfactual_removals({"A": scores}, [2, 0], k=2, n_train=4, seed=3)["random"]
    for mine, other in zip(removals["random"], again, strict=True):
        assert len(set(mine.tolist())) == 2
        np.testing.assert_array_equal(mine, other)
    with pytest.raises(DataError, match="k"):
        counterfactual_removals({"A": scores}, [0], k=4, n_train=4, seed=0)


def test_counterfactual_metrics_measure_how_far_the_regenerated_images_moved() -> None:
    originals = torch.zeros(3, 1, 2, 2)
    moved = originals.clone()
    moved[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # l2 distances 1, 2, 3
    out = counterfactual_metrics(originals, {"same": originals, "moved": moved}, lambda x: x + 1.0, seed=0, n_boot=20)
    assert out["same"]["per_query_l2"] == [0.0, 0.0, 0.0]
    assert out["same"]["feature_cosine"]["mean"] == pytest.approx(1.0)
    assert out["moved"]["per_query_l2"] == pytest.approx([1.0, 2.0, 3.0])
    assert out["moved"]["pixel_l2"]["mean"] == pytest.approx(2.0)
    assert out["moved"]["feature_cosine"]["mean"] < 1.0
    with pytest.raises(DataError, match="shape"):
        counterfactual_metrics(originals, {"bad": moved[:2]}, lambda x: x, seed=0, n_boot=5)
