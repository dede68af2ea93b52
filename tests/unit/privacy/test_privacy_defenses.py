"""GNIME and RND: distortion bookkeeping (RND matched to GNIME), determinism, save/load, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genprov.data import load_dataset
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import (
    DEFENSES,
    EXPLAINERS,
    Defense,
    Explainer,
    GaussianNoiseConfig,
    GaussianNoiseDefense,
    GNIMEConfig,
    GNIMEDefense,
    matched_gaussian_noise,
    measure_distortion,
)

torch.set_num_threads(1)

_FAST = GNIMEConfig(a=100.0, width=4, n_layers=2, inverter_width=4, inverter_depth=1, n_epochs=3, seed=0)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.Tensor, Explainer, GNIMEDefense]:
    x = load_dataset("digits", n=80, seed=1).images
    torch.manual_seed(0)
    model = CNNClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    explainer = EXPLAINERS.create("gradient", model)
    return x, explainer, GNIMEDefense(explainer, _FAST).fit(x)


def test_gnime_defends_maps_and_keeps_predictions(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, gnime = setup
    assert DEFENSES.names() == ["gaussian-noise", "gnime"]
    assert len(gnime.history_) == 3 and all(h["distortion"] > 0 for h in gnime.history_)
    clean = explainer.explain(x)
    defended = gnime.explain(x)
    assert defended.shape == clean.shape and not torch.equal(defended, clean)
    torch.testing.assert_close(defended, gnime.defend(clean))
    obs = gnime.observe(x)
    assert torch.equal(obs.predictions, explainer.predict(x))
    assert obs.explanations is not None and torch.equal(obs.explanations, defended)
    # distortion bookkeeping: measure_distortion is the mean squared difference to the clean maps
    expected = float(((defended.double() - clean.double()) ** 2).mean())
    assert measure_distortion(gnime, x) == pytest.approx(expected, rel=1e-12)


def test_gnime_is_deterministic_and_a_trades_distortion(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, gnime = setup
    again = GNIMEDefense(explainer, _FAST).fit(x)
    assert torch.equal(again.explain(x), gnime.explain(x))
    utility_only = GNIMEDefense(explainer, _FAST.replace(a=0.0)).fit(x)
    assert measure_distortion(utility_only, x) < measure_distortion(gnime, x)


def test_rnd_matched_to_gnime_has_the_same_distortion(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, _, gnime = setup
    target = measure_distortion(gnime, x)
    rnd = matched_gaussian_noise(gnime, x, seed=3)
    assert rnd.explainer is gnime.explainer and rnd.matched_distortion == pytest.approx(target, rel=1e-12)
    assert rnd.config.sigma == pytest.approx(math.sqrt(target), rel=1e-12)  # unclamped: variance = distortion
    # measured on 80 maps x 64 pixels: the sample mean of sigma^2 * chi2(1) is within a few percent
    assert measure_distortion(rnd, x) == pytest.approx(target, rel=0.1)
    clamped = matched_gaussian_noise(gnime, x, clamp=True, seed=3)  # calibrated by bisection on x's maps
    assert clamped.config.clamp and clamped.config.sigma > rnd.config.sigma
    assert measure_distortion(clamped, x) == pytest.approx(target, rel=1e-6)
    assert float(clamped.explain(x).min()) >= 0 and float(clamped.explain(x).max()) <= 1


def test_rnd_noise_depends_on_the_map_not_the_batch(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, _ = setup
    rnd = GaussianNoiseDefense(explainer, GaussianNoiseConfig(sigma=0.2, seed=5))
    clean = explainer.explain(x)
    full = rnd.defend(clean)
    torch.testing.assert_close(full[7:8], rnd.defend(clean[7:8]))
    assert torch.equal(rnd.defend(clean), full)  # repeating a query gives the same answer
    other_seed = GaussianNoiseDefense(explainer, GaussianNoiseConfig(sigma=0.2, seed=6)).defend(clean)
    assert not torch.equal(full, other_seed)
    assert GaussianNoiseDefense.for_distortion(explainer, 0.04).config.sigma == pytest.approx(0.2)
    zero = GaussianNoiseDefense(explainer, GaussianNoiseConfig(sigma=0.0))
    assert torch.equal(zero.explain(x), clean)


def test_save_load_round_trip(tmp_path: Path, setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, gnime = setup
    gnime.save_pretrained(tmp_path / "gnime")
    back = Defense.from_pretrained(tmp_path / "gnime", explainer)
    assert isinstance(back, GNIMEDefense) and back.config == gnime.config and back.history_ == gnime.history_
    assert torch.equal(back.explain(x), gnime.explain(x))
    rnd = matched_gaussian_noise(gnime, x)
    rnd.save_pretrained(tmp_path / "rnd")
    rnd_back = GaussianNoiseDefense.from_pretrained(tmp_path / "rnd", explainer)
    assert rnd_back.config == rnd.config and torch.equal(rnd_back.explain(x), rnd.explain(x))
    with pytest.raises(CheckpointError, match="method 'gradient' recorded, 'grad-cam' given"):
        Defense.from_pretrained(tmp_path / "gnime", EXPLAINERS.create("grad-cam", explainer.model))
    with pytest.raises(CheckpointError, match="holds a 'gnime' defense, not a GaussianNoiseDefense"):
        GaussianNoiseDefense.from_pretrained(tmp_path / "gnime", explainer)


def test_bad_inputs_get_clear_errors(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, gnime = setup
    with pytest.raises(NotFittedError, match=r"call \.fit"):
        GNIMEDefense(explainer, _FAST).explain(x)
    with pytest.raises(DataError, match=r"shape \(n, 1, 8, 8\).*got \(2, 1, 4, 4\)"):
        gnime.defend(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="postprocess=False"):
        gnime.explain(x, postprocess=False)
    with pytest.raises(ConfigError, match="a must be a number >= 0"):
        GNIMEConfig(a=-1.0)
    with pytest.raises(ConfigError, match="clamped RND needs explanations"):
        GaussianNoiseDefense.for_distortion(explainer, 0.01, clamp=True)
    with pytest.raises(ConfigError, match="wraps an Explainer"):
        GNIMEDefense(explainer.model, _FAST)  # type: ignore[arg-type]
