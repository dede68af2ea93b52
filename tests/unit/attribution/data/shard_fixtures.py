"""Fixtures shared by the shard-driver and Ray tests: a tiny DDPM checkpoint, 24 digits, the single-process
features they must equal bit for bit, and the TRAK config of both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.attribution.data.trak_shards import TRAKShardTask
from genprov.data import load_dataset
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig

__all__ = ["CONFIG", "checkpoint", "kill_driver_on_call", "reference", "train"]

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


def kill_driver_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Make the ``n``-th shard task computed in this process raise ``KeyboardInterrupt`` (a driver killed mid-run);
    returns the list of the started shards' first rows, filled as they start."""
    calls: list[int] = []
    real = TRAKShardTask.__call__

    def dies(self: TRAKShardTask, start: int, stop: int) -> dict[str, np.ndarray]:
        calls.append(start)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        return real(self, start, stop)

    monkeypatch.setattr(TRAKShardTask, "__call__", dies)
    return calls
