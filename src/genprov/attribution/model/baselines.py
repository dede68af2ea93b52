"""Baselines of FLIPAD's experiments (Laszkiewicz et al., ICML 2024, Sec. 5), on the same protocol.

Each is a :class:`~genprov.attribution.model.base.ModelAttributor`: fitted on the owner's samples (and
optional negatives), thresholded at ``fnr`` on held-out own samples, scoring higher for samples more
likely made by the generator.

* ``"raw-pixels"`` (:class:`RawPixelAttributor`, the paper's RawPAD): Deep SAD on the pixels (area-resized
  to at most ``pool_to``; tabular rows as they are), not standardised by default, as in the paper's code.
* ``"dct"`` (:class:`DCTAttributor`, DCTPAD, after Frank et al., 2020): Deep SAD on the log magnitude of
  the orthonormal 2-D DCT-II of every channel, ``log(|DCT(x)| + eps)``, of the centre crop to at most
  ``pool_to``, standardised with own-sample statistics.
* ``"prnu"`` (:class:`PRNUAttributor`, after Marra et al., 2019): the generator's fingerprint is the mean
  noise residual ``x - blur(x)`` of its samples; the score is the normalised correlation of a sample's
  residual with it. No detector; negatives are not used.
* ``"latent-inversion"`` (:class:`LatentInversionAttributor`, after Albright & McCloskey, 2019): optimise
  the latent ``z`` to reconstruct the sample with the generator (Adam, several restarts from shared
  starting latents), score ``= -min_restarts mean((G(z) - x)^2)``. No detector; negatives are not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genprov.attribution.model.base import MODEL_ATTRIBUTORS, ModelAttributor, ModelAttributorConfig
from genprov.attribution.model.feature_attributor import FeatureAttributor, FeatureAttributorConfig, reduce_spatial
from genprov.config import is_positive_int, require
from genprov.data.perturb import gaussian_blur
from genprov.exceptions import ConfigError, DataError
from genprov.utils.seeding import derive_seed

__all__ = [
    "DCTAttributor",
    "DCTAttributorConfig",
    "LatentInversionAttributor",
    "LatentInversionAttributorConfig",
    "PRNUAttributor",
    "PRNUAttributorConfig",
    "RawPixelAttributor",
    "RawPixelAttributorConfig",
    "dct2",
    "dct_matrix",
]


def _need_images(x: Tensor, method: str) -> None:
    if x.ndim != 4:
        raise ConfigError(
            f"The {method!r} baseline works on images (n, C, H, W); got samples of shape {tuple(x.shape)}. "
            "For tabular data use 'flipad', 'raw-pixels' or 'latent-inversion'."
        )


# ---------------------------------------------------------------------------------------------- raw pixels


@dataclass(frozen=True, kw_only=True)
class RawPixelAttributorConfig(FeatureAttributorConfig):
    """Raw-pixel baseline settings; ``standardize`` defaults to ``False`` as in the paper's code."""

    standardize: bool = False


@MODEL_ATTRIBUTORS.register("raw-pixels", config=RawPixelAttributorConfig)
class RawPixelAttributor(FeatureAttributor):
    """Deep SAD on raw pixels (RawPAD) or raw tabular rows; ``generator`` is not used."""

    name: ClassVar[str] = "raw-pixels"
    config_class: ClassVar[type[ModelAttributorConfig]] = RawPixelAttributorConfig
    pool_mode: ClassVar[str] = "area"

    def _features(self, x: Tensor) -> Tensor:
        return x


# ------------------------------------------------------------------------------------------------------ DCT


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, n) orthonormal DCT-II matrix ``C`` (``C @ v`` equals ``scipy.fft.dct(v, norm="ortho")``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two axes (equals ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``)."""
    ch = dct_matrix(x.shape[-2], dtype=x.dtype)
    cw = dct_matrix(x.shape[-1], dtype=x.dtype)
    return ch @ x @ cw.T


@dataclass(frozen=True, kw_only=True)
class DCTAttributorConfig(FeatureAttributorConfig):
    """DCT baseline settings.

    Attributes:
        dct_eps: Added to ``|DCT(x)|`` before the logarithm (paper code: 1e-10).
    """

    dct_eps: float = 1e-10

    def validate(self) -> None:
        super().validate()
        require(self.dct_eps > 0, "dct_eps", "a positive number", self.dct_eps)


@MODEL_ATTRIBUTORS.register("dct", config=DCTAttributorConfig)
class DCTAttributor(FeatureAttributor):
    """Deep SAD on the log-magnitude DCT spectrum (DCTPAD); ``generator`` is not used."""

    name: ClassVar[str] = "dct"
    config_class: ClassVar[type[ModelAttributorConfig]] = DCTAttributorConfig
    config: DCTAttributorConfig

    def _features(self, x: Tensor) -> Tensor:
        _need_images(x, self.name)
        cropped = reduce_spatial(x, self.config.pool_to, "crop")
        return torch.log(dct2(cropped).abs() + self.config.dct_eps)


# ---------------------------------------------------------------------------------------------------- PRNU


@dataclass(frozen=True, kw_only=True)
class PRNUAttributorConfig(ModelAttributorConfig):
    """PRNU-style fingerprint settings.

    Attributes:
        sigma: Gaussian denoiser width in pixels; the residual is ``x - blur(x)``.
    """

    sigma: float = 1.0

    def validate(self) -> None:
        super().validate()
        require(self.sigma > 0, "sigma", "a positive number of pixels", self.sigma)


@MODEL_ATTRIBUTORS.register("prnu", config=PRNUAttributorConfig)
class PRNUAttributor(ModelAttributor):
    """Fingerprint = mean noise residual of own samples; score = correlation with a sample's residual.

    Attributes:
        fingerprint_: (C, H, W) zero-mean, unit-norm mean residual of the own training samples.
    """

    name: ClassVar[str] = "prnu"
    config_class: ClassVar[type[ModelAttributorConfig]] = PRNUAttributorConfig
    config: PRNUAttributorConfig

    fingerprint_: Tensor

    def _residual(self, x: Tensor) -> Tensor:
        _need_images(x, self.name)
        r = x - gaussian_blur(x, self.config.sigma)
        return r - r.mean(dim=(1, 2, 3), keepdim=True)

    def _fit(self, own: Tensor, negatives: Tensor | None) -> None:
        fingerprint = self._residual(own).mean(0)
        norm = fingerprint.norm()
        if float(norm) == 0.0:
            raise DataError("The own samples have no noise residual (they are constant); PRNU cannot be fitted.")
        self.fingerprint_ = fingerprint / norm

    def _score(self, x: Tensor) -> Tensor:
        r = self._residual(x)
        return (r * self.fingerprint_).flatten(1).sum(1) / r.flatten(1).norm(dim=1).clamp_min(1e-12)

    def _state(self) -> tuple[dict[str, object], dict[str, Tensor]]:
        return {}, {"fingerprint": self.fingerprint_}

    def _restore(self, meta: dict[str, object], tensors: dict[str, Tensor]) -> None:
        self.fingerprint_ = tensors["fingerprint"]


# -------------------------------------------------------------------------------------------- latent inversion


@dataclass(frozen=True, kw_only=True)
class LatentInversionAttributorConfig(ModelAttributorConfig):
    """Latent-inversion settings.

    Attributes:
        n_restarts: Starting latents per sample (shared by all samples, drawn from ``seed``).
        n_steps: Adam steps per restart.
        lr: Adam learning rate on ``z``.
    """

    n_restarts: int = 4
    n_steps: int = 200
    lr: float = 0.05

    def validate(self) -> None:
        super().validate()
        require(is_positive_int(self.n_restarts), "n_restarts", "a positive integer", self.n_restarts)
        require(is_positive_int(self.n_steps), "n_steps", "a positive integer", self.n_steps)
        require(self.lr > 0, "lr", "a positive number", self.lr)


@MODEL_ATTRIBUTORS.register("latent-inversion", config=LatentInversionAttributorConfig)
class LatentInversionAttributor(ModelAttributor):
    """Score = minus the best reconstruction error ``min_z mean((G(z) - x)^2)`` over restarts.

    The generator must have ``sample_latent(n, seed=...)`` (every genprov GAN and tabular generator has).
    """

    name: ClassVar[str] = "latent-inversion"
    config_class: ClassVar[type[ModelAttributorConfig]] = LatentInversionAttributorConfig
    config: LatentInversionAttributorConfig
    needs_generator: ClassVar[bool] = True

    def _generator(self) -> tuple[nn.Module, Any]:
        """The generator and its ``sample_latent`` method."""
        g = self.generator
        sample_latent = getattr(g, "sample_latent", None)
        if not isinstance(g, nn.Module) or not callable(sample_latent):
            raise ConfigError(
                "latent-inversion needs a generator with a sample_latent(n, seed=...) method (genprov's GANs and "
                f"tabular generators have one); got {type(g).__name__}."
            )
        return g, sample_latent

    def _fit(self, own: Tensor, negatives: Tensor | None) -> None:
        self._generator()  # nothing to learn besides the threshold

    def _score(self, x: Tensor) -> Tensor:
        g, sample_latent = self._generator()
        cfg = self.config
        n, r = len(x), cfg.n_restarts
        start: Tensor = sample_latent(r, seed=derive_seed(cfg.seed, "latent-inversion"))
        z = start[None].expand(n, *start.shape).reshape(n * r, *start.shape[1:]).clone().requires_grad_(True)
        target = x.to(start.device).repeat_interleave(r, dim=0)
        was_training = g.training
        g.eval()
        try:
            with torch.enable_grad():
                opt = torch.optim.Adam([z], lr=cfg.lr)
                for _ in range(cfg.n_steps):
                    loss = (g(z) - target).pow(2).flatten(1).mean(1)
                    (grad,) = torch.autograd.grad(loss.sum(), z)
                    z.grad = grad
                    opt.step()
            with torch.no_grad():
                errors = (g(z) - target).pow(2).flatten(1).mean(1).reshape(n, r)
        finally:
            g.train(was_training)
        return -errors.min(1).values.cpu()
