"""DCGAN-style image GANs: DCGAN, WGAN-GP, LSGAN and EBGAN.

All four architectures share one generator (Radford et al., 2016): the latent vector is projected to a
small feature map by a transposed convolution, then doubled in size by ``ConvTranspose2d`` + BatchNorm +
ReLU blocks; the last block is a bare ``ConvTranspose2d`` followed by ``tanh``. That last layer is what
FLIPAD (Laszkiewicz et al., ICML 2024, Sec. 3) inverts, so the generator exposes it as
:attr:`Generator.final_layer` together with :meth:`Generator.penultimate`, its input, such that
``G(z) == tanh(final_layer(penultimate(z)))``.

The architectures differ in their discriminator and objective:

==========  ======================================  ==============================================
arch        discriminator                           objective
==========  ======================================  ==============================================
dcgan       conv + BatchNorm + LeakyReLU -> logit   non-saturating BCE (Goodfellow et al., 2014)
lsgan       same as dcgan                           least squares, targets 0/1 (Mao et al., 2017)
wgan-gp     conv + LayerNorm + LeakyReLU -> score   Wasserstein + gradient penalty (Gulrajani et al., 2017)
ebgan       conv auto-encoder; energy = recon. MSE  margin loss + pull-away term (Zhao et al., 2017)
==========  ======================================  ==============================================

Sizes: 8 (2->4->8), 16 (4->8->16), 28 (7->14->28), 32 (4->...->32) and 64 (4->...->64) pixels.
"""

from __future__ import annotations

import dataclasses
import itertools
from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, did_you_mean, is_positive_int, require
from genprov.exceptions import ConfigError
from genprov.registry import Registry
from genprov.utils.seeding import torch_generator

__all__ = [
    "GAN_OBJECTIVES",
    "GAN_SIZES",
    "Discriminator",
    "EnergyDiscriminator",
    "GANConfig",
    "GANObjective",
    "Generator",
    "build_discriminator",
    "build_gan",
    "gradient_penalty",
    "latent_vectors",
    "make_objective",
    "objective_for",
    "pull_away_term",
]

#: image size -> (size of the first feature map, number of doublings up to the image size)
GAN_SIZES: dict[int, tuple[int, int]] = {8: (2, 2), 16: (4, 2), 28: (7, 2), 32: (4, 3), 64: (4, 4)}
_ARCHS = ("dcgan", "wgan-gp", "lsgan", "ebgan")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig(Config):
    """Architecture and objective of an image GAN.

    Attributes:
        arch: ``"dcgan"``, ``"wgan-gp"``, ``"lsgan"`` or ``"ebgan"``.
        image_size: Side of the square images: 8, 16, 28, 32 or 64.
        channels: 1 (grey) or 3 (RGB).
        latent_dim: Dimension of the Gaussian latent vector z.
        width: Feature maps of the generator's penultimate layer (and of the discriminator's first);
            each coarser resolution has twice as many.
        gp_weight: WGAN-GP gradient penalty weight (lambda; 10 in the paper).
        ebgan_margin: EBGAN margin m: fake energies above m are not pushed further up.
        pull_away_weight: Weight of EBGAN's pull-away term in the generator loss (0 turns it off).
    """

    arch: str = "dcgan"
    image_size: int = 8
    channels: int = 1
    latent_dim: int = 32
    width: int = 32
    gp_weight: float = 10.0
    ebgan_margin: float = 1.0
    pull_away_weight: float = 0.1

    def validate(self) -> None:
        if self.arch not in _ARCHS:
            raise ConfigError(
                f"arch must be one of {', '.join(_ARCHS)}; got {self.arch!r}.{did_you_mean(self.arch, _ARCHS)}"
            )
        require(
            self.image_size in GAN_SIZES,
            "image_size",
            f"one of {sorted(GAN_SIZES)} (resize the data with --resize)",
            self.image_size,
        )
        require(self.channels in (1, 3), "channels", "1 (grey) or 3 (RGB)", self.channels)
        require(is_positive_int(self.latent_dim), "latent_dim", "a positive integer", self.latent_dim)
        require(is_positive_int(self.width), "width", "a positive integer", self.width)
        require(self.gp_weight >= 0, "gp_weight", "a non-negative number", self.gp_weight)
        require(self.ebgan_margin > 0, "ebgan_margin", "a positive number", self.ebgan_margin)
        require(self.pull_away_weight >= 0, "pull_away_weight", "a non-negative number", self.pull_away_weight)

    def objective(self) -> GANObjective:
        """The :class:`GANObjective` of ``arch`` with this config's hyper-parameters."""
        return objective_for(self)


def _channels(config: GANConfig) -> list[int]:
    """Feature maps per resolution, coarsest first; the last entry is ``width`` (penultimate layer)."""
    _, n_up = GAN_SIZES[config.image_size]
    return [config.width * 2 ** (n_up - 1 - i) for i in range(n_up)]


class Generator(nn.Module):
    """DCGAN generator ``z -> tanh(final_layer(penultimate(z)))``.

    Args:
        config: The GAN's architecture.

    Attributes:
        final_layer: The last ``nn.ConvTranspose2d`` (``width`` -> ``channels`` maps, doubling the size).
        final_activation: ``"tanh"``.
        latent_dim: Dimension of z.
    """

    final_activation: Literal["tanh"] = "tanh"

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        start, _ = GAN_SIZES[config.image_size]
        chans = _channels(config)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, chans[0], start, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(),
        ]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.final_layer: nn.ConvTranspose2d = nn.ConvTranspose2d(chans[-1], config.channels, 4, 2, 1)

    def penultimate(self, z: Tensor) -> Tensor:
        """The input of :attr:`final_layer`.

        Args:
            z: (n, latent_dim) latent vectors.

        Returns:
            (n, width, image_size/2, image_size/2) non-negative activations (after ReLU).
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(f"z must have shape (n, {self.latent_dim}); got {tuple(z.shape)}.")
        out: Tensor = self.body(z[:, :, None, None])
        return out

    def forward(self, z: Tensor) -> Tensor:
        """Generate images.

        Args:
            z: (n, latent_dim) latent vectors.

        Returns:
            (n, channels, image_size, image_size) images in [-1, 1].
        """
        return torch.tanh(self.final_layer(self.penultimate(z)))

    def sample_latent(self, n: int, *, seed: int, start: int = 0) -> Tensor:
        """Standard normal latents; row ``i`` depends only on ``(seed, start + i)``.

        Args:
            n: Number of latents.
            seed: Seed; a local generator is used, never the global RNG.
            start: Index of the first latent (so ``sample_latent(5, seed=s, start=5)`` continues
                ``sample_latent(5, seed=s)``).

        Returns:
            (n, latent_dim) float32 on the generator's device.
        """
        return latent_vectors(n, self.latent_dim, seed=seed, start=start).to(_device_of(self))


def latent_vectors(n: int, dim: int, *, seed: int, start: int = 0) -> Tensor:
    """(n, dim) standard normal rows, row ``i`` drawn from ``torch_generator(seed, "latent", start + i)``."""
    if n < 0:
        raise ConfigError(f"n must be a non-negative integer; got {n}.")
    rows = [torch.randn(dim, generator=torch_generator(seed, "latent", start + i)) for i in range(n)]
    return torch.stack(rows) if rows else torch.empty(0, dim)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _down_stack(config: GANConfig, *, norm: str) -> tuple[nn.Sequential, int]:
    """Strided convolutions from the image down to the generator's first resolution.

    Returns:
        The stack and its number of output maps.
    """
    chans = _channels(config)[::-1]  # finest first: width, 2 width, ...
    layers: list[nn.Module] = [nn.Conv2d(config.channels, chans[0], 4, 2, 1), nn.LeakyReLU(0.2)]
    size = config.image_size // 2
    for c_in, c_out in itertools.pairwise(chans):
        size //= 2
        layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(c_out))
        elif norm == "layer":
            layers.append(nn.LayerNorm([c_out, size, size]))
        layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers), chans[-1]


class Discriminator(nn.Module):
    """Convolutional discriminator / critic returning one unbounded score per image.

    BatchNorm for DCGAN and LSGAN; LayerNorm for WGAN-GP, whose gradient penalty is per example and
    must not mix examples through batch statistics.

    Args:
        config: The GAN's architecture (``arch`` picks the normalisation).
    """

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.body, c_last = _down_stack(config, norm="layer" if config.arch == "wgan-gp" else "batch")
        start, _ = GAN_SIZES[config.image_size]
        self.head = nn.Conv2d(c_last, 1, start, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """Score images.

        Args:
            x: (n, channels, image_size, image_size) images in [-1, 1].

        Returns:
            (n,) logits (dcgan), scores (lsgan) or critic values (wgan-gp); higher = more real.
        """
        return self.head(self.body(x)).flatten()


class EnergyDiscriminator(nn.Module):
    """EBGAN's auto-encoder discriminator; the energy of an image is its reconstruction error.

    Args:
        config: The GAN's architecture.
    """

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, _ = _down_stack(config, norm="batch")
        chans = _channels(config)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], config.channels, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

    def embed(self, x: Tensor) -> Tensor:
        """(n, C, H, W) images -> (n, d) flattened codes (used by the pull-away term)."""
        return self.encoder(x).flatten(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """(n, C, H, W) images -> (n, C, H, W) reconstructions in [-1, 1]."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        """Energies.

        Args:
            x: (n, channels, image_size, image_size) images in [-1, 1].

        Returns:
            (n,) reconstruction mean squared errors; lower = more real.
        """
        return (self.reconstruct(x) - x).pow(2).flatten(1).mean(1)


def build_discriminator(config: GANConfig) -> nn.Module:
    """The discriminator matching ``config.arch``."""
    return EnergyDiscriminator(config) if config.arch == "ebgan" else Discriminator(config)


def build_gan(config: GANConfig) -> dict[str, nn.Module]:
    """Fresh ``{"generator": ..., "discriminator": ...}`` for ``config`` (the checkpoint module names)."""
    return {"generator": Generator(config), "discriminator": build_discriminator(config)}


# ---------------------------------------------------------------------------------------------- objectives


class GANObjective(ABC):
    """The discriminator and generator losses of one GAN variant (works for images and tabular rows).

    Args:
        gp_weight: Gradient penalty weight (WGAN-GP).
        margin: Energy margin (EBGAN).
        pull_away_weight: Pull-away term weight (EBGAN).
    """

    def __init__(self, *, gp_weight: float = 10.0, margin: float = 1.0, pull_away_weight: float = 0.1) -> None:
        self.gp_weight = gp_weight
        self.margin = margin
        self.pull_away_weight = pull_away_weight

    @abstractmethod
    def discriminator_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
        """Scalar loss minimised by the discriminator; ``fake`` is detached; ``generator`` feeds any randomness."""

    @abstractmethod
    def generator_loss(self, disc: nn.Module, fake: Tensor) -> Tensor:
        """Scalar loss minimised by the generator."""


GAN_OBJECTIVES: Registry[GANObjective] = Registry("GAN objective")


@GAN_OBJECTIVES.register("dcgan")
class NonSaturatingObjective(GANObjective):
    """DCGAN: BCE on logits; the generator maximises log D(G(z)) (non-saturating)."""

    def discriminator_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
        return F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()

    def generator_loss(self, disc: nn.Module, fake: Tensor) -> Tensor:
        return F.softplus(-disc(fake)).mean()


@GAN_OBJECTIVES.register("lsgan")
class LeastSquaresObjective(GANObjective):
    """LSGAN: D regresses real to 1 and fake to 0; G pushes D(G(z)) to 1 (both halved)."""

    def discriminator_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
        return 0.5 * ((disc(real) - 1).pow(2).mean() + disc(fake).pow(2).mean())

    def generator_loss(self, disc: nn.Module, fake: Tensor) -> Tensor:
        return 0.5 * (disc(fake) - 1).pow(2).mean()


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x critic(x_hat)||_2 - 1)^2]`` on random interpolates ``x_hat``.

    Args:
        critic: Maps (n, ...) inputs to (n,) scores.
        real: (n, ...) real inputs.
        fake: (n, ...) generated inputs (detached).
        generator: Draws the interpolation weights (on CPU).

    Returns:
        Scalar penalty (differentiable w.r.t. the critic's parameters).
    """
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    eps = torch.rand(shape, generator=generator).to(real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


@GAN_OBJECTIVES.register("wgan-gp")
class WassersteinGPObjective(GANObjective):
    """WGAN-GP: critic maximises E[D(real)] - E[D(fake)] with a gradient penalty (lambda = gp_weight)."""

    def discriminator_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
        loss = disc(fake).mean() - disc(real).mean()
        return loss + self.gp_weight * gradient_penalty(disc, real, fake, generator)

    def generator_loss(self, disc: nn.Module, fake: Tensor) -> Tensor:
        return -disc(fake).mean()


def pull_away_term(codes: Tensor) -> Tensor:
    """EBGAN's pull-away term: mean squared cosine similarity between distinct codes.

    Args:
        codes: (n, d) embeddings of a batch of generated samples.

    Returns:
        Scalar in [0, 1]; 0 when n < 2.
    """
    n = codes.shape[0]
    if n < 2:
        return codes.sum() * 0
    unit = F.normalize(codes, dim=1)
    cos2 = (unit @ unit.T).pow(2)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


@GAN_OBJECTIVES.register("ebgan")
class EnergyMarginObjective(GANObjective):
    """EBGAN: D minimises D(real) + max(0, m - D(fake)); G minimises D(G(z)) (+ pull-away term)."""

    def discriminator_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
        return disc(real).mean() + F.relu(self.margin - disc(fake)).mean()

    def generator_loss(self, disc: nn.Module, fake: Tensor) -> Tensor:
        loss = disc(fake).mean()
        if self.pull_away_weight > 0 and isinstance(disc, EnergyDiscriminator):
            loss = loss + self.pull_away_weight * pull_away_term(disc.embed(fake))
        return loss


def make_objective(
    arch: str, *, gp_weight: float = 10.0, margin: float = 1.0, pull_away_weight: float = 0.0
) -> GANObjective:
    """The :class:`GANObjective` registered as ``arch`` (``"dcgan"``, ``"lsgan"``, ``"wgan-gp"``, ``"ebgan"``)."""
    factory = GAN_OBJECTIVES.entry(arch).factory
    return factory(gp_weight=gp_weight, margin=margin, pull_away_weight=pull_away_weight)


def objective_for(config: GANConfig) -> GANObjective:
    """The :class:`GANObjective` of ``config.arch`` with the config's hyper-parameters."""
    return make_objective(
        config.arch, gp_weight=config.gp_weight, margin=config.ebgan_margin, pull_away_weight=config.pull_away_weight
    )
