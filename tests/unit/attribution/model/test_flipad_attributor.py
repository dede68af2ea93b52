"""FLIPAD attributor: every generator type, activation recovery, save/load, and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flipad_test_helpers import FAST_DETECTOR, TinyOverdetermined, samples
from torch import Tensor, nn

from genprov.attribution.model import (
    MODEL_ATTRIBUTORS,
    FinalLayerInversionAttributor,
    FinalLayerInversionAttributorConfig,
    ModelAttributor,
    resolve_final_layer,
)
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.results import ModelAttributionResult

FAST = FinalLayerInversionAttributorConfig(max_iter=30, n_anchor=64, detector=FAST_DETECTOR, holdout_fraction=0.25)


def _noise_images(n: int, shape: tuple[int, ...], seed: int, low: float = -1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen) * (1.0 - low) + low


def test_recovers_the_known_activation_of_a_tiny_generator(tiny_overdetermined: TinyOverdetermined) -> None:
    g = tiny_overdetermined
    cfg = FAST.replace(alpha=1e-7, max_iter=3000, tol=1e-7)
    flipad = FinalLayerInversionAttributor(g, cfg).prepare(samples(g, 16, seed=0))
    z = g.sample_latent(8, seed=1)
    with torch.no_grad():
        truth, images = g.penultimate(z), g(z)
    recovered = flipad.features(images)
    assert float((recovered - truth).norm() / truth.norm()) < 1e-3
    torch.testing.assert_close(flipad.reconstruct(images), images, atol=1e-4, rtol=0)
    anchor_ref = g.penultimate(g.sample_latent(64, seed=0)).mean(0)
    assert flipad.anchor_.shape == anchor_ref.shape == (2, 4, 4)


def test_zoo_gan(tiny_gan: nn.Module) -> None:
    own = samples(tiny_gan, 48, seed=1)
    real = _noise_images(40, (1, 8, 8), 2)
    flipad = FinalLayerInversionAttributor(tiny_gan, FAST).fit(own, negatives=real)
    assert flipad.final_layer_name_ == "final_layer"
    scores = flipad.score_samples(torch.cat([own[:5], real[:5]]))
    assert scores.shape == (10,)
    assert scores.dtype == torch.float32
    verdicts = flipad.predict(real[:5])
    assert verdicts.dtype == torch.bool
    assert torch.equal(verdicts, flipad.score_samples(real[:5]) >= flipad.threshold_)
    result = flipad.attribute(real[:3])
    assert isinstance(result, ModelAttributionResult)
    assert result.method == "flipad"
    assert result.threshold == flipad.threshold_
    # the threshold keeps at most floor(fnr * n_holdout) held-out own samples below it
    assert int((flipad.holdout_scores_ < flipad.threshold_).sum()) == 0


def test_same_seed_same_scores(tiny_gan: nn.Module) -> None:
    own, real = samples(tiny_gan, 40, seed=1), _noise_images(30, (1, 8, 8), 2)
    a = FinalLayerInversionAttributor(tiny_gan, FAST).fit(own, negatives=real).score_samples(real)
    b = FinalLayerInversionAttributor(tiny_gan, FAST).fit(own, negatives=real).score_samples(real)
    torch.testing.assert_close(a, b)


def test_batched_scores_equal_one_by_one(tiny_gan: nn.Module) -> None:
    own, real = samples(tiny_gan, 40, seed=1), _noise_images(30, (1, 8, 8), 2)
    flipad = FinalLayerInversionAttributor(tiny_gan, FAST.replace(batch_size=7)).fit(own, negatives=real)
    together = flipad.score_samples(real[:6])
    single = torch.cat([flipad.score_samples(real[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, single, atol=1e-5, rtol=1e-5)


def test_tabular_generator(tiny_tabular: nn.Module) -> None:
    own = samples(tiny_tabular, 48, seed=1)
    other = torch.randn(40, 5)
    flipad = MODEL_ATTRIBUTORS.create("flipad", tiny_tabular, config=FAST.replace(alpha=1e-4)).fit(own, negatives=other)
    assert flipad.anchor_.shape == (6,)
    assert flipad.score_samples(other[:4]).shape == (4,)
    with pytest.raises(DataError, match=r"per-sample shape \(5,\)"):
        flipad.score_samples(torch.zeros(3, 4))


def test_autoencoder_kl_decoder() -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=8
    ).eval()
    with torch.no_grad():
        own = vae.decode(torch.randn(40, 2, 8, 8)).sample.clamp(-1, 1)
    real = _noise_images(30, (3, 8, 8), 3)
    flipad = FinalLayerInversionAttributor(vae, FAST.replace(n_anchor=16)).fit(own, negatives=real)
    assert flipad.final_layer_name_ == "decoder.conv_out"
    assert flipad.anchor_.shape == (8, 8, 8)
    assert flipad.score_samples(real[:3]).shape == (3,)


class _Plain(nn.Module):
    """A generic generator without genprov's attributes: z -> Linear -> ReLU -> ConvT -> sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Linear(4, 3 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (3, 4, 4)), nn.ConvTranspose2d(3, 1, 4, 2, 1)
        )

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z))


def _sampler(n: int, seed: int) -> Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed % 2**31))


def test_any_module_with_named_final_layer_and_activation() -> None:
    g = _Plain().eval()
    own = g(_sampler(40, 0)).detach()
    other = _noise_images(30, (1, 8, 8), 4, low=0.0)
    flipad = FinalLayerInversionAttributor(g, FAST, final_layer="net.3", activation="sigmoid", latent_sampler=_sampler)
    flipad.fit(own, negatives=other)
    assert flipad.config.final_layer == "net.3"
    assert flipad.config.activation == "sigmoid"
    assert flipad.anchor_.shape == (3, 4, 4)
    with pytest.raises(DataError, match=r"values in \[0.0, 1.0\]"):
        flipad.score_samples(other - 1.0)


def test_save_and_load_round_trip(tiny_gan: nn.Module, tmp_path: Path) -> None:
    own, real = samples(tiny_gan, 40, seed=1), _noise_images(30, (1, 8, 8), 2)
    flipad = FinalLayerInversionAttributor(tiny_gan, FAST).fit(own, negatives=real)
    flipad.save_pretrained(tmp_path / "det")
    assert {p.name for p in (tmp_path / "det").iterdir()} == {"config.json", "state.safetensors"}
    loaded = ModelAttributor.from_pretrained(tmp_path / "det", tiny_gan)
    assert isinstance(loaded, FinalLayerInversionAttributor)
    assert loaded.config == flipad.config
    assert loaded.threshold_ == flipad.threshold_
    torch.testing.assert_close(loaded.score_samples(real), flipad.score_samples(real))
    torch.testing.assert_close(
        FinalLayerInversionAttributor.from_pretrained(tmp_path / "det", tiny_gan).anchor_, flipad.anchor_
    )
    with pytest.raises(CheckpointError, match="needs the generator"):
        ModelAttributor.from_pretrained(tmp_path / "det")
    other = type(tiny_gan)(tiny_gan.config)
    with pytest.raises(CheckpointError, match="differs from the one"):
        ModelAttributor.from_pretrained(tmp_path / "det", other)
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        ModelAttributor.from_pretrained(tmp_path / "nowhere", tiny_gan)


def test_config_round_trip_and_validation() -> None:
    cfg = FAST.replace(alpha=1e-3, final_layer="a.b", activation="identity")
    assert FinalLayerInversionAttributorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="alpha"):
        FinalLayerInversionAttributorConfig(alpha=-1.0)
    with pytest.raises(ConfigError, match="Did you mean 'tanh'"):
        FinalLayerInversionAttributorConfig(activation="tahn")
    with pytest.raises(ConfigError, match="fnr"):
        FinalLayerInversionAttributorConfig(fnr=1.5)
    with pytest.raises(ConfigError, match="given twice"):
        FinalLayerInversionAttributor(None, FAST.replace(final_layer="x"), final_layer="y")


class _Upsampler(nn.Module):
    final_activation = "tanh"

    def __init__(self) -> None:
        super().__init__()
        self.final_layer = nn.Upsample(scale_factor=2)


def test_unsupported_or_missing_final_layer_errors(tiny_gan: nn.Module) -> None:
    with pytest.raises(ConfigError, match="is a Upsample; FLIPAD inverts a linear last layer"):
        resolve_final_layer(_Upsampler())
    with pytest.raises(ConfigError, match=r"no 'final_layer' attribute\. Pass final_layer="):
        resolve_final_layer(_Plain())
    with pytest.raises(ConfigError, match=r"no such submodule\. Did you mean 'net\.3'"):
        resolve_final_layer(_Plain(), "net.33", "tanh")
    with pytest.raises(ConfigError, match="Pass activation="):
        resolve_final_layer(_Plain(), "net.3")
    with pytest.raises(ConfigError, match="needs the generator"):
        resolve_final_layer(None)
    own = _Plain()(torch.randn(20, 4)).detach()
    with pytest.raises(ConfigError, match="latent_sampler"):
        FinalLayerInversionAttributor(_Plain(), FAST, final_layer="net.3", activation="sigmoid").fit(own)


def test_input_errors_and_not_fitted(tiny_gan: nn.Module) -> None:
    flipad = FinalLayerInversionAttributor(tiny_gan, FAST)
    x = samples(tiny_gan, 40, seed=1)
    for call in (flipad.score_samples, flipad.predict, flipad.attribute, flipad.features):
        with pytest.raises(NotFittedError, match="fit"):
            call(x)
    with pytest.raises(NotFittedError):
        flipad.save_pretrained("unused")
    with pytest.raises(DataError, match="at least 2 for training"):
        flipad.fit(x[:2])
    with pytest.raises(DataError, match=r"values in \[-1.0, 1.0\]"):
        flipad.fit(x + 2.5)
    with pytest.raises(DataError, match=r"shape \(n, C, H, W\).*unsqueeze"):
        flipad.fit(x[0])
    with pytest.raises(DataError, match="negatives must have the per-sample shape"):
        flipad.fit(x, negatives=torch.zeros(4, 1, 4, 4))
    flipad.fit(x)  # one class: no negatives
    with pytest.raises(DataError, match=r"per-sample shape \(1, 8, 8\)"):
        flipad.score_samples(torch.zeros(2, 1, 16, 16))
    with pytest.raises(DataError, match="NaN"):
        flipad.score_samples(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(DataError, match="outputs"):
        FinalLayerInversionAttributor(tiny_gan, FAST).fit(torch.zeros(10, 1, 6, 6))


def test_fista_starts_at_the_anchor_or_at_zero(tiny_gan: nn.Module, tmp_path: Path) -> None:
    own, real = samples(tiny_gan, 40, seed=1), _noise_images(30, (1, 8, 8), 2)
    assert FinalLayerInversionAttributorConfig().fista_init == "anchor"  # the original's start
    features = {}
    for init in ("anchor", "zero"):
        flipad = FinalLayerInversionAttributor(tiny_gan, FAST.replace(fista_init=init, max_iter=5))
        features[init] = flipad.prepare(own).features(real)
    # few iterations on an under-determined layer: the start is not forgotten
    assert not torch.allclose(features["anchor"], features["zero"], atol=1e-3)
    with pytest.raises(ConfigError, match="fista_init"):
        FinalLayerInversionAttributorConfig(fista_init="random")
    # a detector saved before the option existed (no "fista_init" in its state) started FISTA at zero
    flipad = FinalLayerInversionAttributor(tiny_gan, FAST.replace(fista_init="zero")).fit(own, negatives=real)
    flipad.save_pretrained(tmp_path / "det")
    config_file = tmp_path / "det" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["state"]["method"]["features"]["fista_init"]
    del saved["config"]["fista_init"]
    config_file.write_text(json.dumps(saved))
    loaded = FinalLayerInversionAttributor.from_pretrained(tmp_path / "det", tiny_gan)
    assert loaded.config.fista_init == "zero"
    torch.testing.assert_close(loaded.score_samples(real), flipad.score_samples(real))
