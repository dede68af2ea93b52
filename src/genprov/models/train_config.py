"""The training configuration shared by every trainer in ``genprov.models.training``.

It lives in its own module so that ``genprov.models.checkpoints`` can parse the ``"training"`` entry of a
checkpoint's ``config.json`` without importing the training loops.
"""

from __future__ import annotations

import dataclasses

from genprov.config import Config, is_int, require

__all__ = ["COMMAND_STEPS", "TrainConfig"]

#: Training steps of ``genprov train gan`` and ``genprov train ddpm`` when ``--steps`` is not given: enough
#: for a usable model on 8-16 px digits on a CPU (a DDPM needs more steps than a GAN). ``TrainConfig.n_steps``
#: is the kind-independent library default (and ``genprov train classifier``'s).
COMMAND_STEPS: dict[str, int] = {"gan": 2000, "ddpm": 3000}


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
