"""Pieces of ``genprov.experiments.flipad`` that run fast: presets, perturbations, the demo section."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flipad_test_helpers import FAST_DETECTOR
from torch import nn

from genprov.attribution.model import FinalLayerInversionAttributorConfig
from genprov.data import PERTURBATIONS, perturb
from genprov.exceptions import ConfigError
from genprov.experiments import EXPERIMENTS
from genprov.experiments.flipad import FlipadExperimentConfig, flipad_demo_section
from genprov.experiments.flipad.run import draw_sample_pools, fourier_gaussian_blur, perturb_images, real_split
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
    assert FlipadExperimentConfig(data="runs/faces.npz").side == 16  # any dataset, resized to 16 by default
    assert FlipadExperimentConfig(data="mnist", image_size=32).side == 32
    with pytest.raises(ConfigError, match="image_size must be one of"):
        FlipadExperimentConfig(image_size=20)
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


def test_study_own_pool_is_disjoint_from_the_tables_own_pools() -> None:
    torch.manual_seed(0)
    gens: dict[str, nn.Module] = {
        name: Generator(GANConfig(image_size=8, width=4, latent_dim=8)).eval() for name in ("dcgan@0", "lsgan@0")
    }
    cfg = FlipadExperimentConfig(n_train=20, n_holdout=10, n_test=10)
    pools = draw_sample_pools(cfg, gens, list(gens), "dcgan@0")
    study, table = pools.study_own.flatten(1), pools.own["dcgan@0"].flatten(1)
    assert len(study) == len(table) == 40
    # no sample the validation study fits or tests on is one of Table 1's own samples (fit, threshold or test)
    assert int((torch.cdist(study, table) == 0).sum()) == 0
    assert set(pools.sources) == set(gens)


def test_validation_reals_are_held_out_of_the_gans_training() -> None:
    cfg = FlipadExperimentConfig()  # the full run on digits: 1437 training images
    split = real_split(cfg, 1437)
    assert cfg.val_reals == "held-out"
    assert len(split.val) == cfg.n_test
    assert not set(split.val) & set(split.gan)
    assert set(split.neg) <= set(split.gan) and len(split.neg) >= cfg.n_train
    assert len(split.gan) + len(split.val) == 1437
    # the earlier protocol (and the original's): validation reals are GAN training images
    earlier = real_split(cfg.replace(val_reals="gan-train"), 1437)
    assert set(earlier.val) <= set(earlier.gan) and not set(earlier.val) & set(earlier.neg)
    with pytest.raises(ConfigError, match="val_reals"):
        real_split(cfg, cfg.n_train + cfg.n_test - 1)
    with pytest.raises(ConfigError, match="val_reals"):
        FlipadExperimentConfig(val_reals="test")


def test_blur_paper_is_the_originals_strength_relative_to_the_image_size() -> None:
    gen = torch.Generator().manual_seed(0)
    # at the original's 64 px, close to its torchvision GaussianBlur(kernel_size=3, sigma=3) on smooth images
    x = F.interpolate(torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, size=64, mode="bilinear")
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 18)
    taps = taps / taps.sum()
    original = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), taps.reshape(1, 1, 1, 3))
    original = F.conv2d(original, taps.reshape(1, 1, 3, 1))
    ours = perturb_images(x, "blur-paper", seed=0)
    assert float((ours - original).norm()) < 0.2 * float((original - x).norm())
    # at 16 px: a quarter of the std, far milder than the 1-pixel "blur", and a constant stays constant
    y = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    paper, harsh = perturb_images(y, "blur-paper", seed=0), perturb_images(y, "blur", seed=0)
    assert 0 < float((paper - y).norm()) < 0.3 * float((harsh - y).norm())
    flat = torch.full((1, 1, 16, 16), 0.3)
    torch.testing.assert_close(fourier_gaussian_blur(flat, 0.5), flat)
    assert "blur-paper" in FlipadExperimentConfig().perturbations
    assert "blur" in FlipadExperimentConfig().perturbations  # the earlier strength, reported beside it
