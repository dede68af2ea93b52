"""Fixtures shared by the sharded-scoring tests (in-process and Ray): a tiny GAN checkpoint, a FLIPAD detector
fitted on it and saved, 22 suspect images (its samples and digits) as PNG files, and the scores ``attribute`` gives
them in one process."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from flipad_test_helpers import FAST_DETECTOR

from genprov.attribution.model import FinalLayerInversionAttributor, FinalLayerInversionAttributorConfig
from genprov.data import load_dataset, load_images, png_roundtrip, save_images
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import sample

__all__ = ["detector", "reference_scores", "suspect_tars", "suspects"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FLIPAD detector (batch size 4, 20 FISTA iterations) of an untrained 8x8 DCGAN saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("flipad")
    cfg = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        generator = Generator(cfg).eval()
    save_checkpoint(folder / "gan", "gan", {"generator": generator}, cfg)
    gan = load_checkpoint(folder / "gan").model
    config = FinalLayerInversionAttributorConfig(max_iter=20, batch_size=4, detector=FAST_DETECTOR)
    flipad = FinalLayerInversionAttributor(gan, config)
    flipad.fit(png_roundtrip(sample(gan, 40, seed=1)), negatives=load_dataset("digits", n=40, seed=5).images)
    flipad.save_pretrained(folder / "detector")
    return folder / "detector"


@pytest.fixture(scope="module")
def suspects(detector: Path) -> Path:
    """A folder of 22 PNG files: 10 samples of the detector's GAN, then 12 digits."""
    folder = detector.parent / "suspects"
    gan = load_checkpoint(detector.parent / "gan").model
    save_images(torch.cat([sample(gan, 10, seed=7), load_dataset("digits", split="test", n=12).images]), folder)
    return folder


@pytest.fixture(scope="module")
def suspect_tars(suspects: Path) -> str:
    """The suspects in 2 tar shards of 13 and 9 (folder order): a list file naming them."""
    files = sorted(suspects.iterdir())
    for s, chunk in enumerate((files[:13], files[13:])):
        with tarfile.open(suspects.parent / f"suspects-{s}.tar", "w") as tar:
            for file in chunk:
                tar.add(file, arcname=file.name)
    listing = suspects.parent / "suspects.txt"
    listing.write_text("suspects-0.tar\nsuspects-1.tar\n")
    return str(listing)


@pytest.fixture(scope="module")
def reference_scores(detector: Path, suspects: Path) -> torch.Tensor:
    """The scores of the files loaded one by one and scored in one call (``genprov flipad score``'s path)."""
    flipad = FinalLayerInversionAttributor.from_pretrained(detector)
    return torch.from_numpy(flipad.attribute(load_images(sorted(suspects.iterdir()), size=8, channels=1)).scores)
