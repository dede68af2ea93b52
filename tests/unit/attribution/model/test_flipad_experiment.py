"""Pieces of ``genprov.experiments.flipad`` that run fast: presets, perturbations, the demo section."""

from __future__ import annotations

import pytest
import torch
from flipad_test_helpers import FAST_DETECTOR
from torch import nn

from genprov.attribution.model import FinalLayerInversionAttributorConfig
from genprov.data import PERTURBATIONS, perturb
from genprov.exceptions import ConfigError
from genprov.experiments import EXPERIMENTS
from genprov.experiments.flipad import FlipadExperimentConfig, flipad_demo_section
from genprov.models.gans import GANConfig, Generator
from genprov.report import Report


def test_presets_and_from_dict() -> None:
    quick = FlipadExperimentConfig.from_dict({"quick": True, "n_train": 123})
    assert quick.n_train == 123
    assert quick.gan_steps < FlipadExperimentConfig().gan_steps
    assert quick.n_resamples == 1
    assert FlipadExperimentConfig.preset_for("mnist").n_gan_train == 10_000
    full = FlipadExperimentConfig.preset_for()
    assert FlipadExperimentConfig.from_dict(full.to_dict()) == full
    assert EXPERIMENTS.config_type("flipad") is FlipadExperimentConfig
    with pytest.raises(ConfigError, match="data must be one of"):
        FlipadExperimentConfig(data="cifar10")
    with pytest.raises(ConfigError, match="Did you mean 'n_train'"):
        FlipadExperimentConfig.from_dict({"n_trian": 3})


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_keep_shape_and_range(name: str) -> None:
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = perturb(x, name, seed=1)
    assert out.shape == x.shape
    assert float(out.min()) >= -1.0
    assert float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    torch.testing.assert_close(perturb(x, name, seed=1), out)


def test_perturbation_strengths() -> None:
    x = torch.zeros(64, 1, 16, 16)
    assert float(perturb(x, "noise-0.1", seed=0).std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ConfigError, match="Unknown perturbation"):
        perturb(x, "rotate", seed=0)


def test_demo_section_builds() -> None:
    torch.manual_seed(0)
    owner = Generator(GANConfig(image_size=8, width=4, latent_dim=8)).eval()
    other: nn.Module = Generator(GANConfig(image_size=8, width=4, latent_dim=8)).eval()
    real = torch.rand(60, 1, 8, 8) * 2 - 1
    cfg = FinalLayerInversionAttributorConfig(max_iter=20, n_anchor=32, detector=FAST_DETECTOR)
    section = flipad_demo_section(owner, other, real, n_fit=40, n_test=10, config=cfg)
    assert section.id == "flipad"
    table = section.to_dict()["blocks"][1]
    assert [row["source"] for row in table["rows"]] == ["own (held out)", "real (held out)", "other GAN"]
    assert "FLIPAD" in Report("demo", sections=[section]).to_html()
