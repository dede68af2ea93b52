"""Fixtures shared by the LDS-benchmark tests (in-process and Ray): a tiny DDPM recipe, 24 training digits, 4 query
digits, the plan of 3 subsets x 2 seeds, and the losses of the protocol run model by model, which every backend must
equal bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.data import load_dataset, random_subsets
from genprov.eval.lds import EvalDraws, measure_losses
from genprov.eval.lds_benchmark import LDSBenchmarkConfig, LDSPlan
from genprov.models.checkpoints import save_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.train_config import TrainConfig
from genprov.models.training import train_ddpm
from genprov.utils.seeding import derive_seed

__all__ = [
    "CLI_ARGS",
    "CONFIG",
    "MODEL",
    "RECIPE",
    "checkpoint",
    "explicit_losses",
    "images",
    "plan",
    "queries",
    "reference",
]

MODEL = DDPMConfig.preset("tiny")
RECIPE = TrainConfig(batch_size=8, lr=1e-3, betas=(0.9, 0.999))
CONFIG = LDSBenchmarkConfig(n_subsets=3, n_seeds=2, train_epochs=2, eval_draws=3, seed=4, training=RECIPE)
#: What the CLI tests build: the fixtures' 24 training digits and 4 test digits as queries, the CONFIG sizes.
CLI_ARGS = ["--data", "digits", "--n", "24", "--queries", "digits", "--n-queries", "4", "--subsets", "3"]
CLI_ARGS += ["--seeds", "2", "--epochs", "2", "--draws", "3", "--seed", "4", "--json"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("digits", n=24, seed=4, resize=8).images


@pytest.fixture(scope="module")
def queries() -> torch.Tensor:
    return load_dataset("digits", split="test", n=4, seed=4, resize=8).images


@pytest.fixture(scope="module")
def plan(images: torch.Tensor, queries: torch.Tensor) -> LDSPlan:
    return LDSPlan.make(CONFIG, MODEL, images, queries)


def explicit_losses(
    images: torch.Tensor, queries: torch.Tensor, config: LDSBenchmarkConfig, folder: Path
) -> np.ndarray:
    """The protocol spelled out, one model after the other: subset s = random_subsets row s, model j of every
    subset trained with seed derive_seed(seed, "lds-seed", j) for epochs * ceil(m / batch) steps, then its mean
    loss over EvalDraws.make(queries, J, T, seed)."""
    assert config.training is not None
    torch.set_num_threads(1)
    subsets = random_subsets(len(images), config.n_subsets, config.subset_fraction, seed=config.seed)
    draws = EvalDraws.make(queries, config.eval_draws, MODEL.num_train_timesteps, config.seed)
    losses = np.empty((config.n_subsets, config.n_seeds, len(queries)))
    for s, rows in enumerate(subsets):
        for j in range(config.n_seeds):
            steps = config.train_epochs * math.ceil(len(rows) / config.training.batch_size)
            seed = int(derive_seed(config.seed, "lds-seed", j) % 2**31)
            recipe = config.training.replace(n_steps=steps, seed=seed, log_every=max(1, steps // 100))
            model = train_ddpm(MODEL, recipe, images[torch.as_tensor(rows)], folder / f"{s}-{j}").model
            assert isinstance(model, DDPM)
            losses[s, j] = measure_losses(model, draws)
    return losses


@pytest.fixture(scope="module")
def reference(images: torch.Tensor, queries: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return explicit_losses(images, queries, CONFIG, tmp_path_factory.mktemp("explicit"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DDPM checkpoint recording RECIPE as its training config (weights random: featurize needs some)."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = DDPM(MODEL).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ddpm") / "ckpt", "ddpm", {"ddpm": model}, MODEL, RECIPE)
