"""AEROBLADE: the reconstruction distances against explicit computations, the settings, and the errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from genprov.attribution.model import MODEL_ATTRIBUTORS, AerobladeAttributor, AerobladeAttributorConfig
from genprov.data import png_roundtrip
from genprov.exceptions import ConfigError, DataError

pytest.importorskip("diffusers")
from genprov.models.t2i import sample_pipeline, tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline(0)


@pytest.fixture(scope="module")
def own(pipe: Any) -> Tensor:
    return sample_pipeline(pipe, ["a photo of a horse"], 10, seed=0, steps=4)


def _mode_reconstruction(vae: Any, x: Tensor) -> Tensor:
    with torch.no_grad():
        return png_roundtrip(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1))


def _lpips_without_heads(a: Tensor, b: Tensor) -> Tensor:
    """The reference: LPIPS's normalise-and-compare, written per sample and position with explicit loops."""
    out = torch.zeros(len(a), dtype=torch.float64)
    for i in range(len(a)):
        fa, fb = a[i].double(), b[i].double()
        total = 0.0
        for r in range(fa.shape[1]):
            for c in range(fa.shape[2]):
                u, v = fa[:, r, c], fb[:, r, c]
                total += float(((u / (u.norm() + 1e-10) - v / (v.norm() + 1e-10)) ** 2).sum())
        out[i] = total / (fa.shape[1] * fa.shape[2])
    return out


def test_l2_distance_is_the_pixel_error_of_the_mode_reconstruction(pipe: Any, own: Tensor) -> None:
    det = AerobladeAttributor(pipe, AerobladeAttributorConfig(distance="l2", latent="mode")).fit(own)
    assert det.generator is pipe.vae
    x = own[:3]
    expected = (x - _mode_reconstruction(pipe.vae, x)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(det.distances(x), expected)
    torch.testing.assert_close(det.score_samples(x), -expected)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_encoder_distance_is_lpips_recipe_on_the_vae_encoder_stage(pipe: Any, own: Tensor, layer: int) -> None:
    det = AerobladeAttributor(pipe, AerobladeAttributorConfig(layer=layer, latent="mode")).fit(own)
    x = own[:2]
    rec = _mode_reconstruction(pipe.vae, x)
    enc = pipe.vae.encoder
    stages = [enc.conv_in, *enc.down_blocks][:layer]
    with torch.no_grad():
        fx, fr = x, rec
        for stage in stages:
            fx, fr = stage(fx), stage(fr)
    torch.testing.assert_close(det.distances(x).double(), _lpips_without_heads(fx, fr), rtol=1e-4, atol=1e-6)


def test_layer_zero_sums_every_stage(pipe: Any, own: Tensor) -> None:
    x = own[:2]
    n_stages = 1 + len(pipe.vae.encoder.down_blocks)
    per_layer = [
        AerobladeAttributor(pipe, AerobladeAttributorConfig(layer=k)).fit(own).distances(x)
        for k in range(1, n_stages + 1)
    ]
    total = AerobladeAttributor(pipe, AerobladeAttributorConfig(layer=0)).fit(own).distances(x)
    torch.testing.assert_close(total, torch.stack(per_layer).sum(0))
    with pytest.raises(ConfigError, match=f"0..{n_stages}"):
        AerobladeAttributor(pipe, AerobladeAttributorConfig(layer=n_stages + 1)).fit(own)


def test_posterior_sample_is_seeded_and_differs_from_the_mode(pipe: Any, own: Tensor) -> None:
    x = own[:3]
    sample0 = AerobladeAttributor(pipe, AerobladeAttributorConfig(quantize=False)).reconstruct(x)
    again = AerobladeAttributor(pipe, AerobladeAttributorConfig(quantize=False)).reconstruct(x)
    seed1 = AerobladeAttributor(pipe, AerobladeAttributorConfig(quantize=False, seed=1)).reconstruct(x)
    mode = AerobladeAttributor(pipe, AerobladeAttributorConfig(quantize=False, latent="mode")).reconstruct(x)
    torch.testing.assert_close(sample0, again, rtol=0, atol=0)
    assert not torch.equal(sample0, seed1) and not torch.equal(sample0, mode)
    # quantised reconstructions are 8-bit values
    quantised = AerobladeAttributor(pipe).reconstruct(x)
    torch.testing.assert_close(quantised, png_roundtrip(quantised), rtol=0, atol=0)


def test_training_free_threshold_ignores_negatives(pipe: Any, own: Tensor) -> None:
    a = AerobladeAttributor(pipe).fit(own)
    b = AerobladeAttributor(pipe).fit(own, negatives=torch.rand(6, 3, 16, 16) * 2 - 1)
    assert a.threshold_ == b.threshold_
    hold = a.holdout_scores_
    assert a.threshold_ == float(hold.min())  # fnr 0.5% of 2 held-out samples rejects none


def test_errors_name_the_cause(pipe: Any, own: Tensor) -> None:
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        MODEL_ATTRIBUTORS.create("aeroblade", pipe.unet)
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        AerobladeAttributor(None)
    for bad in ({"distance": "lpips"}, {"latent": "mean"}, {"layer": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AerobladeAttributorConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="3 channels"):
        AerobladeAttributor(pipe).fit(own[:, :1])
    with pytest.raises(DataError, match="multiple of its downsampling"):
        AerobladeAttributor(pipe).fit(own[:, :, :10, :10])
