"""Tiny synthetic data for the model tests (8x8 grey images in [-1, 1], 3 classes)."""

from __future__ import annotations

import pytest
import torch

from genprov.utils.seeding import torch_generator


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    """(40, 1, 8, 8) images uniform in [-1, 1]."""
    gen = torch_generator(0, "tiny-images")
    return torch.rand(40, 1, 8, 8, generator=gen) * 2 - 1


@pytest.fixture(scope="session")
def tiny_labels() -> torch.Tensor:
    """(40,) int64 labels in {0, 1, 2}."""
    return torch.arange(40) % 3


@pytest.fixture(scope="session")
def tiny_table() -> torch.Tensor:
    """(64, 5) tabular rows in [-1, 1]."""
    gen = torch_generator(0, "tiny-table")
    return torch.rand(64, 5, generator=gen) * 2 - 1
