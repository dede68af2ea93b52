"""GNIME and RND: the original's GNIME step, the residual variant, distortion bookkeeping (RND matched to
GNIME), determinism, save/load, clear errors."""

from __future__ import annotations

import json
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
    GNIME_VARIANTS,
    Defense,
    Explainer,
    ExpMIUNet,
    GaussianNoiseConfig,
    GaussianNoiseDefense,
    GNIMEConfig,
    GNIMEDefense,
    NoiseGenerator,
    matched_gaussian_noise,
    measure_distortion,
)
from genprov.utils.seeding import derive_seed

torch.set_num_threads(1)

_FAST = GNIMEConfig(a=100.0, width=4, n_layers=2, inverter_width=4, inverter_depth=1, n_epochs=3, seed=0)
_FAST_TRADE = {"n_epochs": 20, "lr": 1e-2, "inverter_lr": 1e-2}  # enough steps for a to show


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
    torch.testing.assert_close(defended, gnime.defend(clean, gnime.logits(x)))
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
    utility_only = GNIMEDefense(explainer, _FAST.replace(a=0.0, **_FAST_TRADE)).fit(x)
    private = GNIMEDefense(explainer, _FAST.replace(a=1000.0, **_FAST_TRADE)).fit(x)
    assert measure_distortion(utility_only, x) < measure_distortion(private, x)


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


def test_gnime_default_is_the_original_and_clips(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, gnime = setup
    cfg = GNIMEConfig()
    assert (cfg.generator, cfg.clamp, cfg.standardize, cfg.privacy_clamp, cfg.updates) == (
        "unet",
        True,
        True,
        False,
        "simultaneous",
    )
    assert cfg.prediction_input == "logits" and cfg.lr == cfg.inverter_lr == 1e-4
    assert isinstance(gnime.generator_, ExpMIUNet) and gnime.needs_logits
    defended = gnime.explain(x)
    assert float(defended.min()) >= 0.0 and float(defended.max()) <= 1.0  # clipped at release
    clean = explainer.explain(x)
    assert gnime.map_mean_ == pytest.approx(float(clean.double().mean()), rel=1e-6)
    assert gnime.map_std_ == pytest.approx(float(clean.double().std(unbiased=False)), rel=1e-6)
    # 80 images in batches of 64: 2 steps an epoch, counted in the history
    assert [h["step"] for h in gnime.history_] == [2.0, 4.0, 6.0]
    with pytest.raises(DataError, match="reads the victim's logits"):
        gnime.defend(clean)
    with pytest.raises(DataError, match=r"logits must have shape \(80, 10\)"):
        gnime.defend(clean, torch.zeros(80, 3))
    # the generator reads the logits: other logits, other defended maps
    assert not torch.equal(gnime.defend(clean, gnime.logits(x) + 5 * torch.eye(10)[torch.arange(80) % 10]), defended)


def _by_hand_one_step(x: torch.Tensor, explainer: Explainer, cfg: GNIMEConfig) -> dict[str, torch.Tensor]:
    """The generator's weights after one step of WSP-LAB/GNIME's train_step (models.py:170-211), written out:
    its gradient comes from the surrogate as it was before the step (simultaneous updates)."""
    e = explainer.explain(x)
    z = explainer.model(x).detach()
    mean, std = e.double().mean().float(), e.double().std(unbiased=False).float()
    ref = GNIMEDefense(explainer, cfg)
    ref.map_shape_, ref.image_shape_, ref.n_classes_ = (1, 8, 8), (1, 8, 8), 10
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "gnime-init"))
        gen, inv = ref._build()
    s = (e - mean) / std
    g = gen(s, z)
    d = (g * std + mean).clamp(0, 1)
    x01 = (x + 1) / 2
    n_loss1 = ((g - s) ** 2).mean()
    n_loss2 = (((inv(z, d) + 1) / 2 - x01) ** 2).mean()  # linear surrogate, no clamp
    grads_g = torch.autograd.grad(n_loss1 - cfg.a * n_loss2, list(gen.parameters()))
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    for param, grad in zip(gen.parameters(), grads_g, strict=True):
        param.grad = grad
    opt.step()
    return {k: v.detach().clone() for k, v in gen.state_dict().items()}


def test_gnime_step_is_the_originals_simultaneous_update(setup: tuple[torch.Tensor, Explainer, GNIMEDefense]) -> None:
    x, explainer, _ = setup
    cfg = _FAST.replace(n_epochs=1, train_batch_size=len(x))  # one full-batch step
    fitted = GNIMEDefense(explainer, cfg).fit(x)
    expected = _by_hand_one_step(x, explainer, cfg)
    for k, v in fitted.generator_.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-4, atol=1e-6)
    alternating = GNIMEDefense(explainer, cfg.replace(updates="alternating")).fit(x)
    differs = [not torch.allclose(v, expected[k]) for k, v in alternating.generator_.state_dict().items()]
    assert any(differs)  # the alternating generator meets the already updated surrogate


def test_residual_variant_is_genprovs_earlier_gnime(
    tmp_path: Path, setup: tuple[torch.Tensor, Explainer, GNIMEDefense]
) -> None:
    x, explainer, _ = setup
    cfg = _FAST.replace(**GNIME_VARIANTS["residual"])
    residual = GNIMEDefense(explainer, cfg).fit(x)
    assert isinstance(residual.generator_, NoiseGenerator) and not residual.needs_logits
    assert (residual.map_mean_, residual.map_std_) == (0.0, 1.0)
    clean = explainer.explain(x)
    torch.testing.assert_close(residual.defend(clean), residual.explain(x))  # reads the maps only
    h = residual.history_[-1]
    assert h["distortion"] == pytest.approx(h["distortion_raw"], rel=1e-5)  # raw units
    # a folder saved before the variants existed (no generator field) reopens as the residual variant
    folder = residual.save_pretrained(tmp_path / "old")
    raw = json.loads((folder / "config.json").read_text())
    for key in ("generator", "standardize", "privacy_clamp", "updates"):
        raw["config"].pop(key)
    raw["config"]["prediction_input"] = "prob"
    (folder / "config.json").write_text(json.dumps(raw))
    old = Defense.from_pretrained(folder, explainer)
    assert isinstance(old, GNIMEDefense) and old.config.generator == "residual"
    assert torch.equal(old.explain(x), residual.explain(x))
