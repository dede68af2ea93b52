"""LDS evaluation of TRAK scores (``genprov.experiments.dtrak``): oracles, held-out lambda, ceiling, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genprov.exceptions import DataError
from genprov.experiments.dtrak import (
    DTRAKExperimentConfig,
    EvalDraws,
    LDSBenchmark,
    evaluate_lds,
    influence_gallery,
    measure_losses,
    noise_ceiling,
    pixel_similarity,
)
from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_loss
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
    gallery = influence_gallery(train[2], train, scores[0], k_positive=3, k_negative=2)
    assert gallery.rows[0].items[0].caption == "#2" and len(gallery.rows[1].items) == 2


def test_experiment_config_presets() -> None:
    quick = DTRAKExperimentConfig.from_dict({"quick": True, "n_train": 50})
    assert quick.preset == "tiny" and quick.n_train == 50 and quick.n_workers == 1
    full = DTRAKExperimentConfig.preset_for("digits")
    assert full.preset == "small" and full.n_subsets == 32
    assert DTRAKExperimentConfig.from_dict({"data": "mnist"}).image_size == 16
    assert DTRAKExperimentConfig.from_dict(full.to_dict()) == full
