"""The customization benchmark builder: plan, fine-tuning from the base, manifest, resumption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.data import load_dataset
from genprov.eval.customization import load_customizations
from genprov.exceptions import DataError
from genprov.experiments.similarity.customization import (
    CustomizationConfig,
    build_customizations,
    influence_strength,
    stylize,
)
from genprov.models.diffusion import DDPM, DDPMConfig


@pytest.fixture(scope="module")
def setup() -> tuple[DDPM, torch.Tensor, np.ndarray, torch.Tensor]:
    torch.manual_seed(0)
    base = DDPM(DDPMConfig.preset("tiny", image_size=8, channels=1))
    test = load_dataset("digits", split="test", n=60, seed=0)
    pool = load_dataset("digits", split="train", n=50, seed=0).images
    return base, test.images, test.labels.numpy(), pool


def _config() -> CustomizationConfig:
    return CustomizationConfig(
        n_object=2, n_style=2, style_exemplars=2, finetune_steps=2, batch_size=4, n_prior=4, n_samples=3, ddim_steps=2
    )


def test_styles_keep_shape_and_range() -> None:
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    for style in ("thick", "thin", "shear"):
        y = stylize(x, style)
        assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    assert bool((stylize(x, "thick") >= x - 1e-6).all())  # dilation never darkens
    with pytest.raises(DataError, match="Unknown style"):
        stylize(x, "bold")


def test_build_writes_manifest_and_resumes(setup: tuple, tmp_path: Path) -> None:
    base, heldout, labels, pool = setup
    cfg = _config()
    cases = build_customizations(base, heldout, labels, tmp_path, cfg, show_progress=False)
    assert [c.kind for c in cases] == ["object", "object", "style", "style"]
    assert {c.split for c in cases[2:]} == {"seen", "unseen"}
    for c in cases:
        assert c.sample_images(tmp_path).shape == (3, 1, 8, 8)
        assert len(c.exemplar_images(tmp_path)) == len(c.classes)
        assert (c.split == "seen") == all(k in cfg.seen_classes for k in c.classes)
    assert [c.to_dict() for c in load_customizations(tmp_path)] == [c.to_dict() for c in cases]
    used = [i for c in cases for i in c.source_indices]
    assert len(used) == len(set(used))  # no held-out image serves two cases
    # a second call reuses every finished case (same files, no retraining)
    before = (tmp_path / cases[0].samples[0]).stat().st_mtime_ns
    again = build_customizations(base, heldout, labels, tmp_path, cfg, show_progress=False)
    assert [c.to_dict() for c in again] == [c.to_dict() for c in cases]
    assert (tmp_path / cases[0].samples[0]).stat().st_mtime_ns == before
    with pytest.raises(DataError, match="other settings"):
        build_customizations(base, heldout, labels, tmp_path, cfg.replace(n_samples=4), show_progress=False)
    strength = influence_strength(pool, cases, tmp_path, heldout)
    assert 0.0 <= strength["exemplar_nn_rate"] <= 1.0 and strength["median_heldout_to_pool"] > 0


def test_bad_inputs_name_the_problem(setup: tuple, tmp_path: Path) -> None:
    base, heldout, labels, _ = setup
    with pytest.raises(DataError, match="one entry per held-out image"):
        build_customizations(base, heldout, labels[:-1], tmp_path, _config())
    with pytest.raises(DataError, match="held-out images"):
        build_customizations(base, heldout[:3], labels[:3], tmp_path, _config().replace(n_object=5))
    with pytest.raises(DataError, match="build the benchmark first"):
        load_customizations(tmp_path / "none")
