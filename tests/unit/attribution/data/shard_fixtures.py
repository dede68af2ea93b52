"""Fixtures shared by the shard-driver and Ray tests: a tiny DDPM checkpoint, 24 digits, the single-process
features they must equal bit for bit, and the TRAK config of both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.data import load_dataset
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig

__all__ = ["CONFIG", "checkpoint", "reference", "train"]

CONFIG = TRAKConfig(output_function="squared-l2-norm", n_timesteps=2, proj_dim=16, batch_size=3, shard_size=6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = DDPM(DDPMConfig.preset("tiny")).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ddpm") / "ckpt", "ddpm", {"ddpm": model}, model.config)


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return load_dataset("digits", n=24).images


@pytest.fixture(scope="module")
def reference(checkpoint: Path, train: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Features of the single-process fit."""
    store = tmp_path_factory.mktemp("ref") / "store"
    attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG).fit(train, store=store)
    return np.array(attributor.train_features_)
