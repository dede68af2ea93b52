"""Baselines (raw pixels, DCT, PRNU, latent inversion): references, score direction, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import scipy.fft
import torch
from flipad_test_helpers import FAST_DETECTOR, samples
from torch import nn

from genprov.attribution.model import (
    MODEL_ATTRIBUTORS,
    DCTAttributor,
    LatentInversionAttributor,
    ModelAttributor,
    PRNUAttributor,
    RawPixelAttributor,
)
from genprov.attribution.model.baselines import dct2
from genprov.attribution.model.feature_attributor import reduce_spatial
from genprov.data import gaussian_blur
from genprov.eval import roc_auc
from genprov.exceptions import ConfigError, NotFittedError

FLIPAD_METHODS = ["dct", "flipad", "latent-inversion", "prnu", "raw-pixels"]


def test_registry_lists_every_method() -> None:
    assert set(FLIPAD_METHODS) <= set(MODEL_ATTRIBUTORS.names())
    for name in FLIPAD_METHODS:
        attributor = MODEL_ATTRIBUTORS.create(name, None)
        assert attributor.name == name
        with pytest.raises(NotFittedError):
            attributor.score_samples(torch.zeros(2, 1, 8, 8))


def test_dct2_matches_scipy() -> None:
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    torch.testing.assert_close(dct2(x), torch.from_numpy(ref))


def test_gaussian_blur_keeps_constants_and_smooths_noise() -> None:
    const = torch.full((1, 2, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.0), const)
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(gaussian_blur(noise, 1.0).std()) < 0.6 * float(noise.std())


def test_reduce_spatial_modes() -> None:
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert reduce_spatial(x, 4, "max").shape == (1, 1, 4, 4)
    assert float(reduce_spatial(x, 4, "max")[0, 0, 0, 0]) == 9.0
    torch.testing.assert_close(reduce_spatial(x, 4, "area")[0, 0, 0, 0], torch.tensor(4.5))
    torch.testing.assert_close(reduce_spatial(x, 4, "crop"), x[..., 2:6, 2:6])
    assert reduce_spatial(x, 8, "max") is x
    assert reduce_spatial(torch.zeros(3, 5), 2, "max").shape == (3, 5)


def _two_sources(seed: int, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 'own' images with a fixed high-frequency pattern vs smooth images without it."""
    gen = torch.Generator().manual_seed(seed)
    base = gaussian_blur(torch.rand(2 * n, 1, 8, 8, generator=gen) * 1.2 - 0.6, 1.5)
    pattern = 0.25 * torch.sign(torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(99)))
    return (base[:n] + pattern).clamp(-1, 1), base[n:].clamp(-1, 1)


@pytest.mark.parametrize("cls", [RawPixelAttributor, DCTAttributor])
def test_feature_baselines_separate_a_pattern(cls: type, tmp_path: Path) -> None:
    own, other = _two_sources(1)
    att = cls(None, cls.config_class(detector=FAST_DETECTOR.replace(n_epochs=10), holdout_fraction=0.25))
    att.fit(own[:80], negatives=other[:60])
    assert roc_auc(att.score_samples(own[80:]), att.score_samples(other[60:])) > 0.9
    att.save_pretrained(tmp_path / cls.name)
    loaded = ModelAttributor.from_pretrained(tmp_path / cls.name)
    torch.testing.assert_close(loaded.score_samples(other[60:]), att.score_samples(other[60:]))


def test_prnu_fingerprint_correlation(tmp_path: Path) -> None:
    own, other = _two_sources(2)
    prnu = PRNUAttributor(None).fit(own[:80])
    assert prnu.fingerprint_.shape == (1, 8, 8)
    assert roc_auc(prnu.score_samples(own[80:]), prnu.score_samples(other[60:])) > 0.95
    prnu.save_pretrained(tmp_path / "prnu")
    torch.testing.assert_close(
        ModelAttributor.from_pretrained(tmp_path / "prnu").score_samples(other[:4]), prnu.score_samples(other[:4])
    )


def test_latent_inversion_prefers_own_samples(tiny_gan: nn.Module) -> None:
    own = samples(tiny_gan, 30, seed=1)
    noise = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cfg = LatentInversionAttributor.config_class(n_restarts=2, n_steps=40, holdout_fraction=0.3)
    att = LatentInversionAttributor(tiny_gan, cfg).fit(own[:20])
    assert roc_auc(att.score_samples(own[20:]), att.score_samples(noise)) > 0.9
    assert bool((att.score_samples(noise) <= 0).all())


def test_baseline_errors(tiny_tabular: nn.Module) -> None:
    rows = samples(tiny_tabular, 20, seed=0)
    for cls in (DCTAttributor, PRNUAttributor):
        with pytest.raises(ConfigError, match="works on images"):
            cls(None).fit(rows)
    with pytest.raises(ConfigError, match="sample_latent"):
        LatentInversionAttributor(nn.Linear(2, 2)).fit(torch.zeros(10, 1, 4, 4))
    raw = RawPixelAttributor(None, RawPixelAttributor.config_class(detector=FAST_DETECTOR)).fit(
        rows, negatives=rows + 1
    )
    assert raw.score_samples(rows).shape == (20,)
    with pytest.raises(ConfigError, match="takes a RawPixelAttributorConfig"):
        RawPixelAttributor(None, PRNUAttributor.config_class())
