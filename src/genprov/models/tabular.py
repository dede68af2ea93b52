"""MLP GANs for tabular data (features scaled to [-1, 1]).

The generator is an MLP whose last layer is a plain ``nn.Linear`` with no output activation, so that
FLIPAD's final-layer inversion (Laszkiewicz et al., ICML 2024, Sec. 4.5, tabular data) reduces to a
lasso on :meth:`TabularGenerator.penultimate` activations. Objectives are shared with the image GANs
(``genprov.models.gans.GAN_OBJECTIVES``; EBGAN is image-only).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import Tensor, nn

from genprov.config import Config, did_you_mean, is_positive_int, require
from genprov.exceptions import ConfigError
from genprov.models.gans import GANObjective, latent_vectors, make_objective

__all__ = ["TabularDiscriminator", "TabularGANConfig", "TabularGenerator", "build_tabular_gan"]

_ARCHS = ("dcgan", "wgan-gp", "lsgan")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabularGANConfig(Config):
    """Architecture and objective of a tabular GAN.

    Attributes:
        n_features: Number of columns D.
        arch: Objective: ``"dcgan"``, ``"wgan-gp"`` or ``"lsgan"``.
        latent_dim: Dimension of z.
        hidden: Hidden layer widths of the generator (the last one is the penultimate width); the
            discriminator uses them reversed.
        gp_weight: WGAN-GP gradient penalty weight.
    """

    n_features: int = 8
    arch: str = "wgan-gp"
    latent_dim: int = 16
    hidden: tuple[int, ...] = (64, 64)
    gp_weight: float = 10.0

    def validate(self) -> None:
        require(is_positive_int(self.n_features), "n_features", "a positive integer", self.n_features)
        if self.arch not in _ARCHS:
            raise ConfigError(
                f"arch must be one of {', '.join(_ARCHS)} for tabular GANs; got {self.arch!r}."
                f"{did_you_mean(self.arch, _ARCHS)}"
            )
        require(is_positive_int(self.latent_dim), "latent_dim", "a positive integer", self.latent_dim)
        require(
            isinstance(self.hidden, tuple) and len(self.hidden) >= 1 and all(is_positive_int(h) for h in self.hidden),
            "hidden",
            "a non-empty tuple of positive integers, e.g. (64, 64)",
            self.hidden,
        )
        require(self.gp_weight >= 0, "gp_weight", "a non-negative number", self.gp_weight)

    def objective(self) -> GANObjective:
        """The GAN objective of ``arch``."""
        return make_objective(self.arch, gp_weight=self.gp_weight)


class TabularGenerator(nn.Module):
    """MLP generator ``z -> final_layer(penultimate(z))`` (no output activation).

    Args:
        config: The architecture.

    Attributes:
        final_layer: The last ``nn.Linear`` (``hidden[-1]`` -> ``n_features``).
        final_activation: ``"identity"``.
        latent_dim: Dimension of z.
    """

    final_activation: Literal["identity"] = "identity"

    def __init__(self, config: TabularGANConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        layers: list[nn.Module] = []
        d_in = config.latent_dim
        for d_out in config.hidden:
            layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU()]
            d_in = d_out
        self.body = nn.Sequential(*layers)
        self.final_layer: nn.Linear = nn.Linear(d_in, config.n_features)

    def penultimate(self, z: Tensor) -> Tensor:
        """(n, latent_dim) latents -> (n, hidden[-1]) non-negative activations (input of final_layer)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(f"z must have shape (n, {self.latent_dim}); got {tuple(z.shape)}.")
        out: Tensor = self.body(z)
        return out

    def forward(self, z: Tensor) -> Tensor:
        """(n, latent_dim) latents -> (n, n_features) rows (scaled like the training features, unclamped)."""
        out: Tensor = self.final_layer(self.penultimate(z))
        return out

    def sample_latent(self, n: int, *, seed: int, start: int = 0) -> Tensor:
        """(n, latent_dim) standard normal latents; row ``i`` depends only on ``(seed, start + i)``."""
        return latent_vectors(n, self.latent_dim, seed=seed, start=start).to(next(self.parameters()).device)


class TabularDiscriminator(nn.Module):
    """MLP critic: Linear + LeakyReLU layers (widths ``hidden`` reversed) -> one score per row.

    Args:
        config: The architecture.
    """

    def __init__(self, config: TabularGANConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        d_in = config.n_features
        for d_out in reversed(config.hidden):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
            d_in = d_out
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(n, n_features) rows -> (n,) scores; higher = more real."""
        out: Tensor = self.net(x).flatten()
        return out


def build_tabular_gan(config: TabularGANConfig) -> dict[str, nn.Module]:
    """Fresh ``{"generator": ..., "discriminator": ...}`` for ``config``."""
    return {"generator": TabularGenerator(config), "discriminator": TabularDiscriminator(config)}
