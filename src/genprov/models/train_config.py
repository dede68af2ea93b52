"""The training configuration shared by every trainer in ``genprov.models.training``.

It lives in its own module so that ``genprov.models.checkpoints`` can parse the ``"training"`` entry of a
checkpoint's ``config.json`` without importing the training loops.
"""

from __future__ import annotations

import dataclasses
import math

from genprov.config import Config, is_int, require

__all__ = [
    "COMMAND_STEPS",
    "LR_SCHEDULES",
    "TrainConfig",
    "lr_factor",
    "schedule_factor",
    "schedule_warmup",
    "warmup_steps",
]

#: Training steps of ``genprov train gan`` and ``genprov train ddpm`` when ``--steps`` is not given: enough
#: for a usable model on 8-16 px digits on a CPU (a DDPM needs more steps than a GAN). ``TrainConfig.n_steps``
#: is the kind-independent library default (and ``genprov train classifier``'s).
COMMAND_STEPS: dict[str, int] = {"gan": 2000, "ddpm": 3000}
#: Learning-rate schedules: ``constant``, or ``cosine`` (linear warm-up over ``warmup_fraction`` of the run,
#: then a half cosine to 0, as diffusers' ``get_cosine_schedule_with_warmup``; see ``lr_factor``).
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """How to train a model (optimiser, length, seed, checkpointing).

    Use ``genprov.models.training.default_train_config(model_config)`` for per-model defaults.

    Attributes:
        n_steps: Training iterations (generator updates for GANs).
        batch_size: Examples per iteration.
        lr: Adam(W) learning rate.
        betas: Adam betas.
        weight_decay: Decoupled weight decay (AdamW); 0 gives plain Adam.
        seed: Seed of the initial weights, the batch order and every noise draw; step ``s`` draws from
            ``torch_generator(seed, "step", s)``, so a resumed run equals an uninterrupted one.
        checkpoint_every: Save the checkpoint and the resumable state every this many steps (0: only at
            the end).
        log_every: Append the mean losses to ``train_log.jsonl`` every this many steps.
        ema_decay: Exponential moving average of the weights (DDPM only; ``None`` = off). The EMA
            weights are what the checkpoint holds.
        n_critic: Discriminator updates per generator update (GANs; 5 for WGAN-GP in the paper).
        lr_schedule: One of :data:`LR_SCHEDULES`. With ``cosine`` the learning rate of step ``s`` depends on
            ``n_steps``, so such a run resumes only with the ``n_steps`` it started with.
        warmup_fraction: Fraction of ``n_steps`` of linear warm-up (``cosine`` only; D-TRAK's
            ``train_unconditional.py`` uses 0.1, rounded up to whole steps).
        grad_clip: Clip the gradients' global norm to this before each update (``None`` = no clipping;
            D-TRAK's DDPMs use 1.0).
    """

    n_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    ema_decay: float | None = None
    n_critic: int = 1
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        require(is_int(self.n_steps) and self.n_steps >= 0, "n_steps", "a non-negative integer", self.n_steps)
        require(is_int(self.batch_size) and self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(
            isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            "a pair of numbers in [0, 1), e.g. (0.5, 0.999)",
            self.betas,
        )
        require(self.weight_decay >= 0, "weight_decay", "a non-negative number", self.weight_decay)
        require(is_int(self.seed) and self.seed >= 0, "seed", "a non-negative integer", self.seed)
        require(
            is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "a non-negative integer (0 = only at the end)",
            self.checkpoint_every,
        )
        require(is_int(self.log_every) and self.log_every > 0, "log_every", "a positive integer", self.log_every)
        if self.ema_decay is not None:
            require(0 < self.ema_decay < 1, "ema_decay", "a number in (0, 1) or None", self.ema_decay)
        require(is_int(self.n_critic) and self.n_critic > 0, "n_critic", "a positive integer", self.n_critic)
        require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}", self.lr_schedule)
        require(0 <= self.warmup_fraction < 1, "warmup_fraction", "a number in [0, 1)", self.warmup_fraction)
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "grad_clip", "a positive number or None", self.grad_clip)


def warmup_steps(cfg: TrainConfig) -> int:
    """Steps of linear warm-up: ``ceil(warmup_fraction * n_steps)`` (D-TRAK's ``train_unconditional.py:568``)."""
    return schedule_warmup(cfg.lr_schedule, cfg.n_steps, cfg.warmup_fraction)


def schedule_warmup(schedule: str, n_steps: int, warmup_fraction: float) -> int:
    """Warm-up steps of a schedule of ``n_steps``: ``ceil(warmup_fraction * n_steps)`` under ``cosine``, else 0."""
    return math.ceil(warmup_fraction * n_steps) if schedule == "cosine" else 0


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiple of ``cfg.lr`` used by update ``step`` (0-based).

    ``constant``: 1. ``cosine``: ``step / w`` during the ``w`` = :func:`warmup_steps` warm-up steps, then
    ``0.5 (1 + cos(pi p))`` with ``p = (step - w) / (n_steps - w)``, as diffusers'
    ``get_cosine_schedule_with_warmup`` (which D-TRAK's ``train_unconditional.py:574`` uses).
    """
    return schedule_factor(step, cfg.lr_schedule, cfg.n_steps, cfg.warmup_fraction)


def schedule_factor(step: int, schedule: str, n_steps: int, warmup_fraction: float) -> float:
    """:func:`lr_factor` of any trainer: the multiple of the learning rate at ``step`` of a ``schedule`` (one of
    :data:`LR_SCHEDULES`) over ``n_steps`` with ``warmup_fraction`` of linear warm-up."""
    if schedule == "constant":
        return 1.0
    warm = schedule_warmup(schedule, n_steps, warmup_fraction)
    if step < warm:
        return step / max(1, warm)
    progress = (step - warm) / max(1, n_steps - warm)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
