"""A pipeline's U-Net as a conditional noise predictor, and its examples encoded once (for gradient attribution).

Gradient attribution on a text-to-image latent diffusion model (D-TRAK's ArtBench setting, Zheng et al., ICLR
2024, sec. 5) differentiates the U-Net's noise prediction for each training image's latent given its caption.
The VAE and the text encoder are frozen there, so each example is encoded ONCE (:func:`encode_examples`:
latent = the VAE posterior's mode times ``scaling_factor``, context = the text encoder's last hidden state, as
the original's ``grad_text_to_image_lora.py`` does) and the U-Net runs on the cached pair
(:class:`LatentDenoiser`). ``TRAKAttributor.for_pipeline`` builds the attributor from a pipeline; the parameter
filter ``include=LORA_PARAMETER_GLOBS`` differentiates the LoRA tensors only.

Example:
    >>> pipe = load_pipeline("runs/t2i"); load_lora(pipe, "runs/lora")  # doctest: +SKIP
    >>> train = encode_examples(pipe, images, captions)  # doctest: +SKIP
    >>> dtrak = TRAKAttributor.for_pipeline(pipe, TRAKConfig(output_function="squared-l2-norm",
    ...     include=LORA_PARAMETER_GLOBS)).fit(train)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genprov.data.conditioned import ConditionedExamples
from genprov.exceptions import ConfigError, DataError
from genprov.models.t2i.tokenizer import token_ids

__all__ = [
    "ATTENTION_MODES",
    "ENCODE_CHUNK",
    "LatentDenoiser",
    "encode_examples",
    "encode_prompts",
    "plain_attention",
]

#: Images encoded per VAE / text-encoder call.
ENCODE_CHUNK = 64
#: How :class:`LatentDenoiser` runs the U-Net's attention: ``"native"`` (the U-Net's own processors) or
#: ``"plain"`` (diffusers' ``AttnProcessor``, D-TRAK's under vmap; see :func:`plain_attention`).
ATTENTION_MODES = ("native", "plain")


class LatentDenoiser(nn.Module):
    """``forward(x_t, t, context) -> eps``: a pipeline's U-Net on latents given text embeddings.

    The parameters are the U-Net's under the prefix ``unet.`` (a LoRA's tensors keep their peft names, so
    ``*.lora_A.*`` selects them). ``config`` gives the latent side and channels, which the attributor checks
    the examples against.

    Args:
        unet: A diffusers ``UNet2DConditionModel`` (with or without a LoRA adapter).
        scheduler: The pipeline's scheduler (its ``prediction_type`` must be ``"epsilon"``).
        attention: One of :data:`ATTENTION_MODES`. ``"native"`` (default) keeps the U-Net's processors: under
            vmap diffusers' SDPA attention then takes torch's per-example fallback (its "performance drop"
            warning), which on a CPU was as fast as the plain processor on 8x8 latents with less memory (LoRA
            gradients, ``benchmarks/bench_trak_t2i.py``: 0.085 vs 0.093 s per example, peak 1.3 vs 1.7 GB) and
            faster on 16x16 latents (0.63 vs 0.74 s, one measurement on a busy machine). ``"plain"`` runs the
            U-Net's attention through diffusers' plain ``AttnProcessor`` (:func:`plain_attention`), as D-TRAK's
            original does for its vmapped gradients. Both compute the same numbers up to float rounding.

    Raises:
        ConfigError: The scheduler predicts something other than the noise (``v_prediction`` is not supported:
            the output functions are defined on the predicted noise), or an unknown ``attention``.
    """

    #: Tells the attributor that every example comes with its context.
    requires_context = True

    def __init__(self, unet: nn.Module, scheduler: Any, *, attention: str = "native") -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"attention={attention!r} is not one of {ATTENTION_MODES}; use 'native' or 'plain'.")
        self.attention = attention
        prediction = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ConfigError(
                f"The pipeline's scheduler predicts {prediction!r}; gradient attribution here needs a noise-predicting "
                "(prediction_type='epsilon') model such as Stable Diffusion 1.x or 2.x-base."
            )
        self.unet = unet
        unet_config: Any = getattr(unet, "config", None)
        self.config = types.SimpleNamespace(
            image_size=int(unet_config.sample_size), channels=int(unet_config.in_channels)
        )

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """Predicted noise (b, C, h, w) of latents ``x_t`` at timesteps ``t`` (b,) given ``context`` (b, L, D).

        With ``attention="plain"`` the U-Net's attention runs with diffusers' plain ``AttnProcessor``
        (:func:`plain_attention`) during the call; otherwise with the U-Net's own processors.
        """
        plain = self.attention == "plain"
        with plain_attention(self.unet) if plain else contextlib.nullcontext():
            return self.unet(x_t, t, encoder_hidden_states=context, return_dict=False)[0]


def _sdpa_attention_modules(unet: nn.Module) -> list[Any]:
    """The attention modules of ``unet`` whose processor is diffusers' ``AttnProcessor2_0`` and computes exactly
    what the plain ``AttnProcessor`` computes: no query / key norm, the default ``1 / sqrt(head_dim)`` scale
    (``AttnProcessor2_0`` ignores ``attn.scale``). Other processors (trained Custom Diffusion or IP-Adapter
    ones, xformers, ...) are never touched."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    modules: list[Any] = [m for m in unet.modules() if type(getattr(m, "processor", None)) is AttnProcessor2_0]
    return [
        m
        for m in modules
        if m.norm_q is None and m.norm_k is None and math.isclose(float(m.scale), (m.inner_dim // m.heads) ** -0.5)
    ]


@contextlib.contextmanager
def plain_attention(unet: nn.Module) -> Iterator[None]:
    """Run ``unet``'s SDPA attention with diffusers' plain ``AttnProcessor`` while inside; restore it after.

    ``F.scaled_dot_product_attention`` has no vmap batching rule: vmap falls back to a per-example loop (with a
    "performance drop" warning). The plain processor (``baddbmm`` + softmax + ``bmm``) computes the same
    attention with batchable operations, holding every example's attention matrix at once; D-TRAK's original
    forces it by deleting ``F.scaled_dot_product_attention`` before its vmapped gradients
    (``ArtBench2/grad_text_to_image_lora.py:745-747``). On a CPU it was no faster than the fallback (see
    :class:`LatentDenoiser`'s ``attention``). Only ``AttnProcessor2_0`` modules that compute exactly what
    ``AttnProcessor`` does are switched, for the duration of the call (a plain autograd loop then runs the
    plain processor too: the same numbers up to float rounding). The switch mutates the modules while the call runs: do not run the
    same U-Net from another thread meanwhile.
    """
    from diffusers.models.attention_processor import AttnProcessor

    switched = [(m, m.processor) for m in _sdpa_attention_modules(unet)]
    plain = AttnProcessor()
    try:
        for module, _ in switched:
            module.set_processor(plain)
        yield
    finally:
        for module, original in switched:
            module.set_processor(original)


@torch.no_grad()
def encode_prompts(pipeline: Any, prompts: Sequence[str], *, option: str = "--prompt") -> Tensor:
    """The text encoder's last hidden state of each prompt (padded to the tokenizer's length): (n, L, D) float32.

    Raises:
        PromptTooLongError: A prompt does not fit the tokenizer (names it and the limit).
    """
    if not prompts:
        raise DataError("Give at least one caption or prompt.")
    ids = token_ids(pipeline.tokenizer, prompts, option=option)
    device = pipeline.text_encoder.device
    out = [pipeline.text_encoder(chunk.to(device), return_dict=False)[0] for chunk in ids.split(ENCODE_CHUNK)]
    return torch.cat(out).to("cpu", torch.float32)


@torch.no_grad()
def encode_examples(
    pipeline: Any, images: Tensor, captions: Sequence[str], *, option: str = "captions"
) -> ConditionedExamples:
    """Encode captioned images once: latents = VAE posterior mode x ``scaling_factor``, context = text embeddings.

    Args:
        pipeline: A ``StableDiffusionPipeline`` (``load_pipeline``), with or without a LoRA (the VAE and text
            encoder are what the LoRA leaves alone, unless a new token was trained: load the LoRA first).
        images: (n, C, H, W) float images in [-1, 1] at the VAE's size.
        captions: n captions (one per image), each within the tokenizer's length.
        option: What the captions are called in error messages.

    Returns:
        :class:`ConditionedExamples` (float32, CPU).

    Raises:
        DataError: Not a float image tensor, a size or channel count the VAE does not take, NaN, or a caption
            count that differs from the image count.
        PromptTooLongError: A caption does not fit the tokenizer.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"images must be a float tensor (n, C, H, W) in [-1, 1]; got {shape}.")
    if len(captions) != len(images):
        raise DataError(f"{len(captions)} {option} for {len(images)} images; give one caption per image.")
    vae_config = pipeline.vae.config
    size, channels = int(vae_config.sample_size), int(vae_config.in_channels)
    if tuple(images.shape[1:]) != (channels, size, size):
        raise DataError(
            f"images have shape {tuple(images.shape[1:])} but the pipeline's VAE takes ({channels}, {size}, {size}); "
            "resize them (genprov reads any dataset at a given size with --image-size)."
        )
    if not bool(torch.isfinite(images).all()):
        raise DataError("images contain NaN or infinite values.")
    device = pipeline.vae.device
    scaling = float(vae_config.scaling_factor)
    latents = [
        pipeline.vae.encode(chunk.to(device)).latent_dist.mode() * scaling for chunk in images.split(ENCODE_CHUNK)
    ]
    context = encode_prompts(pipeline, captions, option=option)
    return ConditionedExamples(torch.cat(latents).to("cpu", torch.float32), context, tuple(captions))
