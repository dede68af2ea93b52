"""Output functions of a diffusion model whose gradients TRAK and D-TRAK project (a registry).

TRAK (Park et al., 2023) attributes a model output ``f``; for a DDPM the natural choice is the training
loss ``mean((eps_theta(x_t, t) - eps)^2)``. D-TRAK (Zheng et al., ICLR 2024, sec. 4 and table 1) found
that "theoretically unjustified" choices that ignore the target noise, above all the squared l2 norm of
the predicted noise ``mean(eps_theta^2)``, attribute better. Every function here maps a batch of noise
predictions to one scalar per item; the attributor averages it over the timesteps of an example and
differentiates the mean. Use the same function for training and query features.

========================  =========================================================  ===============
name                      f(eps_theta, eps, t)  (sums/means over C, H, W)             paper
========================  =========================================================  ===============
``loss``                  mean((eps_theta - eps)^2)                                    TRAK
``squared-l2-norm``       mean(eps_theta^2)                                            D-TRAK
``mean``                  mean(eps_theta)                                              D-TRAK tab. 1
``l1-norm``               sum(abs(eps_theta))                                          D-TRAK tab. 1
``l2-norm``               sqrt(sum(eps_theta^2))                                       D-TRAK tab. 1
``linf-norm``             max(abs(eps_theta))                                          D-TRAK tab. 1
``weighted-mse``          w_t mean((eps_theta - eps)^2), w_t = b_t / (2 a_t (1 - abar_t))  ELBO weight
========================  =========================================================  ===============

The norms are not divided by the dimension, as in D-TRAK's code (``torch.norm``); ``squared-l2-norm`` is
its ``mean-squared-l2-norm``. ``weighted-mse`` weighs the loss of step t by its term in the variational
bound (Ho et al., 2020, eq. 12).

Example:
    >>> f = OUTPUT_FUNCTIONS.create("squared-l2-norm")
    >>> f(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), schedule).tolist()  # doctest: +SKIP
    [1.0, 1.0]
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from genprov.config import Config
from genprov.exceptions import ConfigError, DataError
from genprov.registry import Registry

__all__ = [
    "OUTPUT_FUNCTIONS",
    "L1Norm",
    "L2Norm",
    "LinfNorm",
    "Loss",
    "Mean",
    "NoiseSchedule",
    "OutputFunction",
    "SquaredL2Norm",
    "WeightedMSE",
]


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The DDPM noise schedule an output function may need.

    Attributes:
        betas: (T,) float32 ``beta_t``.
        alphas_cumprod: (T,) float32 ``abar_t = prod_{s <= t} (1 - beta_s)``.
    """

    betas: Tensor
    alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        if self.betas.ndim != 1 or self.betas.shape != self.alphas_cumprod.shape:
            raise DataError(
                f"betas and alphas_cumprod must both have shape (T,); got {tuple(self.betas.shape)} "
                f"and {tuple(self.alphas_cumprod.shape)}."
            )

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> NoiseSchedule:
        """From a diffusers scheduler (anything with ``betas`` and ``alphas_cumprod`` tensors)."""
        betas = getattr(scheduler, "betas", None)
        abar = getattr(scheduler, "alphas_cumprod", None)
        if not isinstance(betas, Tensor) or not isinstance(abar, Tensor):
            raise ConfigError(
                f"scheduler must have 'betas' and 'alphas_cumprod' tensors (a diffusers DDPMScheduler); got "
                f"{type(scheduler).__name__}."
            )
        return cls(betas.detach().to(torch.float32).cpu(), abar.detach().to(torch.float32).cpu())

    @property
    def n_timesteps(self) -> int:
        """T."""
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The schedule on ``device``."""
        return NoiseSchedule(self.betas.to(device), self.alphas_cumprod.to(device))


class OutputFunction(ABC):
    """A scalar function of the predicted noise (and, for some, the true noise and timestep) per item.

    Args:
        config: Its config (``None``: the registered functions take none).
    """

    #: Whether the function reads the target noise ``eps`` (TRAK's loss does; D-TRAK's norms do not).
    uses_target: ClassVar[bool] = False

    def __init__(self, config: Config | None = None) -> None:
        self.config = config

    def __call__(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """Evaluate the function (checks the shapes, then :meth:`evaluate`).

        Args:
            eps_pred: (b, C, H, W) predicted noise ``eps_theta(x_t, t)``.
            eps: (b, C, H, W) the noise that made ``x_t``.
            t: (b,) integer timesteps.
            schedule: The noise schedule.

        Returns:
            (b,) one value per item.

        Raises:
            DataError: ``eps`` (for functions that read it) or ``t`` does not match ``eps_pred``.
        """
        if self.uses_target and tuple(eps.shape) != tuple(eps_pred.shape):
            raise DataError(
                f"{self!r}: eps has shape {tuple(eps.shape)} but eps_pred {tuple(eps_pred.shape)}; pass the noise "
                "that made x_t, one per predicted item."
            )
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != eps_pred.shape[0]):
            raise DataError(
                f"{self!r}: t has shape {tuple(t.shape)} for {eps_pred.shape[0]} predicted items; pass one timestep "
                "per item."
            )
        return self.evaluate(eps_pred, eps, t, schedule)

    @abstractmethod
    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """The function's value per item on checked inputs (arguments as in :meth:`__call__`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


#: Output functions by name (see the module docstring's table).
OUTPUT_FUNCTIONS: Registry[OutputFunction] = Registry("output function")


@OUTPUT_FUNCTIONS.register("loss")
class Loss(OutputFunction):
    """TRAK's output: the denoising loss ``mean((eps_theta - eps)^2)`` (Ho et al., 2020, eq. 14)."""

    uses_target = True

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred - eps).pow(2).mean(dim=1)


@OUTPUT_FUNCTIONS.register("squared-l2-norm")
class SquaredL2Norm(OutputFunction):
    """D-TRAK's output: ``mean(eps_theta^2)`` (D-TRAK's ``mean-squared-l2-norm``, sec. 4)."""

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred).pow(2).mean(dim=1)


@OUTPUT_FUNCTIONS.register("mean")
class Mean(OutputFunction):
    """``mean(eps_theta)`` (D-TRAK, table 1)."""

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred).mean(dim=1)


@OUTPUT_FUNCTIONS.register("l1-norm")
class L1Norm(OutputFunction):
    """``sum(abs(eps_theta))`` (D-TRAK, table 1)."""

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred).abs().sum(dim=1)


@OUTPUT_FUNCTIONS.register("l2-norm")
class L2Norm(OutputFunction):
    """``sqrt(sum(eps_theta^2))`` (D-TRAK, table 1)."""

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred).pow(2).sum(dim=1).sqrt()


@OUTPUT_FUNCTIONS.register("linf-norm")
class LinfNorm(OutputFunction):
    """``max(abs(eps_theta))`` (D-TRAK, table 1)."""

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        return _flat(eps_pred).abs().amax(dim=1)


@OUTPUT_FUNCTIONS.register("weighted-mse")
class WeightedMSE(OutputFunction):
    """The loss weighted by its term in the variational bound, ``w_t = beta_t / (2 alpha_t (1 - abar_t))``."""

    uses_target = True

    def evaluate(self, eps_pred: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        beta = schedule.betas[t]
        weight = beta / (2 * (1 - beta) * (1 - schedule.alphas_cumprod[t]))
        return weight * _flat(eps_pred - eps).pow(2).mean(dim=1)
