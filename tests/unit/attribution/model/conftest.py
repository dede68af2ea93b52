"""Fixtures of the model-attribution tests: tiny generators (see flipad_test_helpers for the classes)."""

from __future__ import annotations

import pytest
import torch
from flipad_test_helpers import TinyOverdetermined

from genprov.models.gans import GANConfig, Generator
from genprov.models.tabular import TabularGANConfig, TabularGenerator


@pytest.fixture(scope="session")
def tiny_gan() -> Generator:
    """An untrained 8x8 DCGAN generator with a narrow penultimate layer (eval mode)."""
    torch.manual_seed(0)
    return Generator(GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)).eval()


@pytest.fixture(scope="session")
def tiny_tabular() -> TabularGenerator:
    """An untrained tabular generator: 5 columns, one hidden layer of 6 units (eval mode)."""
    torch.manual_seed(0)
    return TabularGenerator(TabularGANConfig(n_features=5, hidden=(6,), latent_dim=4)).eval()


@pytest.fixture(scope="session")
def tiny_overdetermined() -> TinyOverdetermined:
    """A generator whose final layer has fewer unknowns than outputs (exact inversion)."""
    return TinyOverdetermined().eval()
