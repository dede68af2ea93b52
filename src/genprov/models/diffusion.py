"""Denoising diffusion models (DDPM, Ho et al., 2020) on diffusers' ``UNet2DModel``.

The network predicts the noise ``eps`` added to an image ``x0`` at timestep ``t``:
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and the training loss is ``||eps - eps_theta(x_t, t)||^2``
(Ho et al., Eq. 14). Sampling runs DDPM ancestral steps (``DDPMScheduler``) or deterministic DDIM steps
(``DDIMScheduler``, Song et al., 2021) built from the same betas.

Design notes:

* The attention blocks use diffusers' classic ``AttnProcessor`` (explicit matmul + softmax) rather than
  ``scaled_dot_product_attention``: the numbers are the same, and ``torch.func.vmap`` has batching rules
  for every op it uses, so per-example gradients (D-TRAK, Zheng et al., ICLR 2024) run without the
  slow per-example fallback.
* Randomness is per example: the initial noise and every ancestral step's noise for sample ``i`` come
  from ``torch_generator(seed, "ddpm-sample", i)``, so the samples do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from genprov.config import Config, did_you_mean, is_positive_int, require
from genprov.exceptions import ConfigError
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator

if TYPE_CHECKING:  # diffusers takes seconds to import: it is imported where first needed
    from diffusers.models.unets.unet_2d import UNet2DModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

__all__ = [
    "DDPM",
    "DDPM_PRESETS",
    "DDPMConfig",
    "build_ddim_scheduler",
    "build_ddpm",
    "build_scheduler",
    "build_unet",
    "check_noise_schedule",
    "ddpm_loss",
    "ddpm_sample",
]

_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

#: preset name -> architecture fields (image_size defaults per preset; override any field)
DDPM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"block_out_channels": (8, 16), "layers_per_block": 1, "attention": True, "attention_head_dim": 8},
    "small": {"block_out_channels": (16, 32), "layers_per_block": 1, "attention": True, "attention_head_dim": 16},
    "base": {"block_out_channels": (32, 64), "layers_per_block": 1, "attention": True, "attention_head_dim": 32},
    "medium": {
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "attention": True,
        "attention_head_dim": 32,
    },
    "cifar": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "attention": True,
        "attention_head_dim": 64,
    },
}
_PRESET_SIZES = {"tiny": 8, "small": 8, "base": 16, "medium": 28, "cifar": 32}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPMConfig(Config):
    """Architecture and noise schedule of a DDPM.

    Attributes:
        image_size: Side of the square images; divisible by ``2 ** (len(block_out_channels) - 1)``.
        channels: Image channels (1 or 3).
        block_out_channels: U-Net feature maps per resolution, finest first.
        layers_per_block: ResNet blocks per resolution.
        attention: Self-attention at the lowest resolution (``AttnDownBlock2D`` / ``AttnUpBlock2D``)
            and in the middle block.
        attention_head_dim: Channels per attention head; must divide the lowest-resolution channels.
        norm_num_groups: GroupNorm groups; ``None`` picks the largest of 32, 16, 8, 4, 2, 1 dividing
            every entry of ``block_out_channels``.
        num_train_timesteps: Diffusion steps T.
        beta_schedule: ``"linear"`` (Ho et al.), ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (cosine).
        beta_start: beta_1.
        beta_end: beta_T.
    """

    image_size: int = 8
    channels: int = 1
    block_out_channels: tuple[int, ...] = (8, 16)
    layers_per_block: int = 1
    attention: bool = True
    attention_head_dim: int = 8
    norm_num_groups: int | None = None
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def validate(self) -> None:
        blocks = self.block_out_channels
        require(
            isinstance(blocks, tuple) and len(blocks) >= 1 and all(is_positive_int(c) for c in blocks),
            "block_out_channels",
            "a non-empty tuple of positive integers, e.g. (32, 64)",
            blocks,
        )
        factor = 2 ** (len(blocks) - 1)
        require(
            is_positive_int(self.image_size) and self.image_size % factor == 0 and self.image_size // factor >= 2,
            "image_size",
            f"a positive multiple of {factor} (and at least {2 * factor}) for {len(blocks)} resolutions",
            self.image_size,
        )
        require(self.channels in (1, 3), "channels", "1 (grey) or 3 (RGB)", self.channels)
        require(is_positive_int(self.layers_per_block), "layers_per_block", "a positive integer", self.layers_per_block)
        require(
            is_positive_int(self.attention_head_dim) and blocks[-1] % self.attention_head_dim == 0,
            "attention_head_dim",
            f"a positive divisor of the lowest-resolution channels {blocks[-1]}",
            self.attention_head_dim,
        )
        if self.norm_num_groups is not None:
            require(
                is_positive_int(self.norm_num_groups) and all(c % self.norm_num_groups == 0 for c in blocks),
                "norm_num_groups",
                f"a positive divisor of every entry of block_out_channels {blocks} (or None to pick one)",
                self.norm_num_groups,
            )
        check_noise_schedule(self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end)

    @property
    def groups(self) -> int:
        """The GroupNorm group count actually used."""
        if self.norm_num_groups is not None:
            return self.norm_num_groups
        return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in self.block_out_channels))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DDPMConfig:
        """A named architecture, with ``overrides`` (e.g. ``image_size=16, channels=3``) applied.

        Presets (default size; parameters for 1 channel): ``"tiny"`` (8x8, tests, 45k), ``"small"`` (8x8
        digits demo, 177k), ``"base"`` (16x16, 0.7M), ``"medium"`` (28x28 MNIST, 6.5M), ``"cifar"``
        (32x32, 36M, Ho et al.'s CIFAR-10 U-Net).
        """
        if name not in DDPM_PRESETS:
            raise ConfigError(
                f"Unknown DDPM preset {name!r}.{did_you_mean(name, DDPM_PRESETS)} "
                f"Choose one of: {', '.join(DDPM_PRESETS)}."
            )
        names = cls.field_names()
        for key in overrides:
            if key not in names:
                raise ConfigError(f"DDPMConfig has no parameter {key!r}.{did_you_mean(key, names)}")
        return cls(**{"image_size": _PRESET_SIZES[name], **DDPM_PRESETS[name], **overrides})


def build_unet(config: DDPMConfig) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` for ``config`` (classic attention processor, see module doc)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor
    from diffusers.models.unets.unet_2d import UNet2DModel

    n = len(config.block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if config.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    unet = UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=config.groups,
        attention_head_dim=config.attention_head_dim,
        add_attention=config.attention,
    )
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    return unet


def _scheduler_kwargs(config: DDPMConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "clip_sample": True,
        "prediction_type": "epsilon",
    }


def build_scheduler(config: DDPMConfig) -> DDPMScheduler:
    """The DDPM (ancestral) scheduler for ``config``'s betas."""
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    return DDPMScheduler(**_scheduler_kwargs(config), variance_type="fixed_small")


def build_ddim_scheduler(config: DDPMConfig) -> DDIMScheduler:
    """A DDIM scheduler with the same betas as :func:`build_scheduler`."""
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    return DDIMScheduler(**_scheduler_kwargs(config), set_alpha_to_one=True)


class DDPM(nn.Module):
    """A noise-prediction U-Net plus its config and noise schedule.

    Args:
        config: Architecture and schedule.
        unet: An existing U-Net (default: a fresh one from :func:`build_unet`).

    Attributes:
        unet: The ``diffusers.UNet2DModel``.
        alphas_cumprod: (T,) buffer (not saved in checkpoints) with ``abar_t``.
    """

    alphas_cumprod: Tensor

    def __init__(self, config: DDPMConfig, unet: UNet2DModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else build_unet(config)
        abar = build_scheduler(config).alphas_cumprod.to(torch.float32)
        self.register_buffer("alphas_cumprod", abar, persistent=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predict the noise.

        Args:
            x_t: (n, C, H, W) noisy images.
            t: (n,) or () integer timesteps in [0, T).

        Returns:
            (n, C, H, W) predicted noise eps.
        """
        out: Tensor = self.unet(x_t, t).sample
        return out

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0: (n, C, H, W) clean images in [-1, 1].
            noise: (n, C, H, W) standard normal noise.
            t: (n,) integer timesteps.

        Returns:
            (n, C, H, W) noisy images.
        """
        abar = self.alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def build_ddpm(config: DDPMConfig) -> dict[str, nn.Module]:
    """Fresh ``{"ddpm": DDPM(config)}`` (the checkpoint module name)."""
    return {"ddpm": DDPM(config)}


def ddpm_loss(model: DDPM, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Mean squared error between ``noise`` and the model's prediction at ``(x_t, t)`` (Ho et al., Eq. 14).

    Args:
        model: The DDPM.
        x0: (n, C, H, W) clean images.
        noise: (n, C, H, W) standard normal noise.
        t: (n,) integer timesteps.

    Returns:
        Scalar loss.
    """
    return (model(model.add_noise(x0, noise, t), t) - noise).pow(2).mean()


@torch.no_grad()
def ddpm_sample(
    model: DDPM,
    n: int,
    *,
    seed: int,
    ddim_steps: int | None = 100,
    eta: float = 1.0,
    batch_size: int = 256,
    start: int = 0,
    show_progress: bool | None = None,
) -> Tensor:
    """Generate images by reverse diffusion.

    Args:
        model: The DDPM (put in eval mode for the call).
        n: Number of images.
        seed: Seed; sample ``i`` uses ``torch_generator(seed, "ddpm-sample", start + i)``.
        ddim_steps: DDIM steps; ``None`` runs DDPM ancestral sampling over all T steps.
        eta: DDIM stochasticity: 1 (default) is ancestral sampling on the sub-sequence of timesteps,
            which gives much cleaner images than deterministic DDIM (0) for small, briefly trained
            models; ignored when ``ddim_steps`` is ``None``.
        batch_size: Images per forward pass (does not change the result).
        start: Index of the first sample (continues an earlier call).
        show_progress: Progress bar (default: see ``genprov.utils.progress``).

    Returns:
        (n, C, H, W) float32 images in [-1, 1] on the model's device.
    """
    if n < 0 or batch_size <= 0:
        raise ConfigError(f"n must be >= 0 and batch_size > 0; got n={n}, batch_size={batch_size}.")
    if not 0.0 <= eta <= 1.0:  # also refuses NaN; beyond 1 the DDIM noise scale takes a square root of < 0
        raise ConfigError(f"eta (--eta) must be between 0 (deterministic DDIM) and 1 (ancestral); got {eta!r}.")
    if ddim_steps is not None and not 1 <= ddim_steps <= model.config.num_train_timesteps:
        raise ConfigError(
            f"ddim_steps (--ddim-steps) must be between 1 and the model's {model.config.num_train_timesteps} "
            f"training timesteps (0 on the command line, None in Python: ancestral sampling); got {ddim_steps}."
        )
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    outputs: list[Tensor] = []
    n_batches = (n + batch_size - 1) // batch_size
    try:
        for b in progress(range(n_batches), desc="sampling", total=n_batches, show=show_progress):
            idx = range(start + b * batch_size, start + min(n, (b + 1) * batch_size))
            gens = [torch_generator(seed, "ddpm-sample", i) for i in idx]
            x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
            outputs.append(_denoise(model, x, gens, ddim_steps=ddim_steps, eta=eta).clamp(-1, 1))
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, *shape, device=device)


def _denoise(model: DDPM, x: Tensor, gens: list[torch.Generator], *, ddim_steps: int | None, eta: float) -> Tensor:
    """Run the reverse process from noise ``x`` (n, C, H, W); ``gens[i]`` draws example i's step noise."""
    device = x.device
    if ddim_steps is None:
        ancestral = build_scheduler(model.config)
        ancestral.set_timesteps(model.config.num_train_timesteps)
        for t in ancestral.timesteps:
            eps = model(x, t.expand(x.shape[0]).to(device))
            # a list of CPU generators gives every example its own noise stream
            x = _prev_sample(ancestral.step(eps, t, x, generator=cast(Any, gens)))
        return x
    ddim = build_ddim_scheduler(model.config)
    ddim.set_timesteps(ddim_steps)
    for t in ddim.timesteps:
        eps = model(x, t.expand(x.shape[0]).to(device))
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(device) if eta > 0 else None
        x = _prev_sample(ddim.step(eps, t, x, eta=eta, variance_noise=noise))
    return x


def _prev_sample(out: Any) -> Tensor:
    """``prev_sample`` of a scheduler step output (dataclass or tuple)."""
    x: Tensor = out[0] if isinstance(out, tuple) else out.prev_sample
    return x


def check_noise_schedule(num_train_timesteps: int, beta_schedule: str, beta_start: float, beta_end: float) -> None:
    """Validate a DDPM noise schedule (shared by :class:`DDPMConfig` and the text-to-image config).

    Raises:
        ConfigError: Naming the field, what it must be and what it got.
    """
    require(
        is_positive_int(num_train_timesteps) and num_train_timesteps >= 2,
        "num_train_timesteps",
        "an integer >= 2",
        num_train_timesteps,
    )
    require(beta_schedule in _SCHEDULES, "beta_schedule", f"one of {_SCHEDULES}", beta_schedule)
    require(
        0 < beta_start < beta_end < 1, "beta_start, beta_end", "0 < beta_start < beta_end < 1", (beta_start, beta_end)
    )
