"""Tiny generators and fast configs shared by the model-attribution tests (imported by name)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genprov.attribution.model.detectors import DeepSADConfig
from genprov.models.gans import latent_vectors

#: A Deep SAD small enough for unit tests (well under a second per fit).
FAST_DETECTOR = DeepSADConfig(widths=(8,), rep_dim=4, n_epochs=2, lr_milestones=(), batch_size=32)


class TinyOverdetermined(nn.Module):
    """z (8,) -> relu(linear) (2, 4, 4) -> ConvTranspose2d -> tanh (1, 8, 8): 32 unknowns, 64 equations."""

    final_activation = "tanh"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.latent_dim = 8
        self.body = nn.Linear(8, 32)
        self.final_layer = nn.ConvTranspose2d(2, 1, 4, 2, 1)
        with torch.no_grad():
            self.final_layer.weight.mul_(0.5)

    def penultimate(self, z: Tensor) -> Tensor:
        return torch.relu(self.body(z)).reshape(-1, 2, 4, 4)

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.final_layer(self.penultimate(z)))

    def sample_latent(self, n: int, *, seed: int, start: int = 0) -> Tensor:
        return latent_vectors(n, 8, seed=seed, start=start)


def samples(generator: nn.Module, n: int, seed: int) -> Tensor:
    """``n`` outputs of a generator with ``sample_latent`` (no gradients)."""
    with torch.no_grad():
        out: Tensor = generator(generator.sample_latent(n, seed=seed))
    return out
