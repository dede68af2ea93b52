"""Reproductions take a dataset as a path: an ``.npz`` without test keys is split by the seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gnime_experiment import TINY as GNIME_TINY

from genprov.data import load_dataset
from genprov.experiments.base import run_experiment
from genprov.experiments.dtrak import DTRAKExperimentConfig
from genprov.experiments.dtrak.run import _load as load_dtrak_data
from genprov.experiments.gnime import GNIMEExperimentConfig

torch.set_num_threads(1)


@pytest.fixture
def digits_npz(tmp_path: Path) -> Path:
    """500 digits as uint8 with labels and no test split."""
    digits = load_dataset("digits", n=500, seed=0)
    images = ((digits.images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    np.savez(tmp_path / "mine.npz", x=images, y=digits.labels.numpy())
    return tmp_path / "mine.npz"


def test_gnime_tiny_run_on_a_path(digits_npz: Path, tmp_path: Path) -> None:
    config = {**GNIME_TINY, "data": str(digits_npz), "image_size": 8}
    assert GNIMEExperimentConfig.from_dict(config).size == 8
    assert GNIMEExperimentConfig(data=str(digits_npz)).size == 32  # other data: 32 px unless image_size says
    run_experiment("gnime", config, tmp_path / "out", show_progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sum(saved["splits"].values()) == 300
    assert f"--data {digits_npz}" in saved["provenance"]["command"]


def test_dtrak_data_from_a_path_is_split_by_the_seed(digits_npz: Path) -> None:
    cfg = DTRAKExperimentConfig.from_dict({"data": str(digits_npz), "quick": True, "n_train": 100})
    train, queries = load_dtrak_data(cfg)
    assert len(train) == 100 and len(queries) == min(cfg.n_real_queries, 100)
    rows = {tuple(r.flatten().tolist()) for r in train.images}
    assert not rows & {tuple(r.flatten().tolist()) for r in queries.images}  # no query is a training image
