"""AEROBLADE: training-free attribution to a latent diffusion model by its autoencoder's reconstruction error.

Ricker, Lukovnikov and Fischer, "AEROBLADE: Training-Free Detection of Latent Diffusion Images Using
Autoencoder Reconstruction Error", CVPR 2024. An image made by a latent diffusion model went through its
VAE's decoder, so encoding and decoding it again changes it less than it changes a real image (or one from
a model with another autoencoder). The score of an image ``x`` is ``-dist(x, D(E(x)))``: higher = more likely
made by a model with this autoencoder. Nothing is learned: :meth:`fit` only sets the threshold at ``fnr``
on held-out own samples (the shared protocol of :class:`~genprov.attribution.model.base.ModelAttributor`);
negatives are not used.

What the original does (jonasricker/aeroblade):

* reconstruction: ``retrieve_latents(ae.encode(x), generator)`` (a *sample* of the posterior, the generator
  seeded with 1) then ``ae.decode``, clamped and saved as an 8-bit PNG (``src/aeroblade/image.py:88-111``);
* distance: LPIPS (VGG) between the image and its reconstruction, per layer without the sum
  (``src/aeroblade/distances.py:62-121``, ``_PatchedLPIPS``); the score is minus the distance
  (``LPIPS._postprocess``, ``distances.py:201-209``) and the default, best layer is ``lpips_vgg_2``
  (``scripts/run_aeroblade.py:63``), VGG's second block.

Departures (documented choices, not silent): LPIPS needs torchvision's ImageNet VGG weights and its learned
linear heads, which cannot be loaded here (no torchvision, nothing downloaded). ``distance="encoder"`` (the
default) is LPIPS's recipe without the learned heads (its ``lpips=False`` variant) in the feature space of
the VAE's *own encoder*, the one network that comes with the model: the features of ``x`` and of its
reconstruction are unit-normalised over channels at every position, their squared difference is summed over
channels and averaged over positions. ``layer`` picks the encoder stage as the original picks a VGG layer:
1 is ``conv_in`` (full resolution, as VGG's first block), 2 the first down block (half resolution after its
downsampler, as VGG's second block: the default, matching ``lpips_vgg_2``), ..., and 0 sums all stages (as
``lpips_vgg_0``). ``distance="l2"`` is the plain per-pixel mean squared error. The posterior sample uses one
fixed noise pattern drawn from ``seed`` (the original draws from one generator across the data set, so its
noise depends on the images' order; a fixed pattern keeps scores independent of order and batching);
``latent="mode"`` takes the posterior mode instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genprov.attribution.model.base import MODEL_ATTRIBUTORS, ModelAttributor, ModelAttributorConfig
from genprov.attribution.model.flipad import autoencoder_of
from genprov.config import is_int, require
from genprov.data import png_roundtrip
from genprov.exceptions import ConfigError, DataError
from genprov.utils.seeding import torch_generator

__all__ = ["AEROBLADE_DISTANCES", "AerobladeAttributor", "AerobladeAttributorConfig", "encoder_features"]

#: Distances between an image and its reconstruction (see the module docstring).
AEROBLADE_DISTANCES = ("encoder", "l2")
#: Posterior draws: ``"sample"`` (the original's, with a fixed noise pattern) or ``"mode"``.
_LATENTS = ("sample", "mode")


@dataclass(frozen=True, kw_only=True)
class AerobladeAttributorConfig(ModelAttributorConfig):
    """AEROBLADE settings.

    Attributes:
        distance: ``"encoder"`` (LPIPS's recipe in the VAE encoder's features, the default) or ``"l2"`` (pixel
            mean squared error).
        layer: Encoder stage of the ``"encoder"`` distance: 1 = ``conv_in``, ``k`` = the ``(k - 1)``-th down
            block, 0 = the sum over all stages (the original's best VGG layer is the second: 2).
        latent: ``"sample"`` (a posterior sample, the original's; one fixed noise pattern from ``seed``) or
            ``"mode"`` (the posterior mean).
        quantize: Round the reconstruction to 8 bits before the distance (the original saves it as a PNG).
    """

    distance: str = "encoder"
    layer: int = 2
    latent: str = "sample"
    quantize: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.distance in AEROBLADE_DISTANCES, "distance", "'encoder' or 'l2'", self.distance)
        require(is_int(self.layer, minimum=0), "layer", "a non-negative integer (0: all encoder stages)", self.layer)
        require(self.latent in _LATENTS, "latent", "'sample' (the original) or 'mode'", self.latent)
        require(isinstance(self.quantize, bool), "quantize", "true or false", self.quantize)


def _stages(vae: nn.Module) -> list[nn.Module]:
    """The encoder stages whose outputs the ``"encoder"`` distance compares: ``conv_in``, then each down block."""
    encoder = getattr(vae, "encoder", None)
    conv_in, blocks = getattr(encoder, "conv_in", None), getattr(encoder, "down_blocks", None)
    if not isinstance(conv_in, nn.Module) or not isinstance(blocks, nn.ModuleList):
        raise ConfigError(
            f"distance='encoder' needs a diffusers AutoencoderKL (encoder.conv_in and encoder.down_blocks); this "
            f"{type(vae).__name__} has none. Use distance='l2'."
        )
    return [conv_in, *blocks]


def encoder_features(vae: nn.Module, x: Tensor, layers: int) -> list[Tensor]:
    """The outputs of the first ``layers`` encoder stages of ``vae`` on images ``x`` (``conv_in``, down blocks)."""
    out, h = [], x
    for stage in _stages(vae)[:layers]:
        h = stage(h)
        out.append(h)
    return out


def _lpips_like(a: Tensor, b: Tensor) -> Tensor:
    """LPIPS without learned heads: channel-normalised features, squared difference summed over channels,
    averaged over positions -> (n,)."""
    a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # lpips.normalize_tensor's eps
    b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    return (a - b).pow(2).sum(1).flatten(1).mean(1)


@MODEL_ATTRIBUTORS.register("aeroblade", config=AerobladeAttributorConfig)
class AerobladeAttributor(ModelAttributor):
    """Score = minus the distance between an image and its reconstruction by the model's VAE (training-free).

    Args:
        generator: The latent diffusion model's autoencoder (a diffusers ``AutoencoderKL``, or a pipeline whose
            ``vae`` is one).
        config: Settings (default: :class:`AerobladeAttributorConfig`).

    Example:
        >>> detector = AerobladeAttributor(pipe.vae).fit(own_images)  # doctest: +SKIP
        >>> detector.predict(suspect_images)  # doctest: +SKIP
    """

    name: ClassVar[str] = "aeroblade"
    config_class: ClassVar[type[ModelAttributorConfig]] = AerobladeAttributorConfig
    config: AerobladeAttributorConfig
    needs_generator: ClassVar[bool] = True

    def __init__(self, generator: Any, config: AerobladeAttributorConfig | None = None) -> None:
        super().__init__(autoencoder_of(generator, "aeroblade"), config)

    def _vae(self) -> nn.Module:
        vae = self.generator
        assert vae is not None  # autoencoder_of checked it
        return vae

    def reconstruct(self, x: Tensor) -> Tensor:
        """``D(E(x))`` of (n, C, H, W) images in [-1, 1], clamped (and 8-bit quantised with ``quantize``).

        Raises:
            DataError: Images of another channel count than the VAE's, or a side it does not reproduce.
        """
        vae, cfg = self._vae(), self.config
        channels = getattr(getattr(vae, "config", None), "in_channels", x.shape[1])
        if x.ndim != 4 or x.shape[1] != channels:
            raise DataError(
                f"AEROBLADE reconstructs images of the VAE's {channels} channels, (n, {channels}, H, W); got shape "
                f"{tuple(x.shape)}."
            )
        encode: Any = getattr(vae, "encode", None)
        decode: Any = getattr(vae, "decode", None)
        was_training = vae.training
        vae.eval()
        try:
            with torch.no_grad():
                posterior = encode(x).latent_dist
                latents = posterior.mode()
                if cfg.latent == "sample":
                    noise = torch.randn(
                        tuple(latents.shape[1:]), generator=torch_generator(cfg.seed, "aeroblade-noise")
                    ).to(latents)
                    latents = posterior.mean + posterior.std * noise
                out = decode(latents).sample.clamp(-1, 1)
        finally:
            vae.train(was_training)
        if out.shape != x.shape:
            raise DataError(
                f"The VAE turns {tuple(x.shape[1:])} images into {tuple(out.shape[1:])} reconstructions; pass images "
                "whose side is a multiple of its downsampling factor."
            )
        return png_roundtrip(out) if cfg.quantize else out

    def distances(self, x: Tensor) -> Tensor:
        """(n,) distances between images and their reconstructions (lower = more likely this model's)."""
        cfg = self.config
        rec = self.reconstruct(x)
        if cfg.distance == "l2":
            return (x - rec).pow(2).flatten(1).mean(1)
        n_stages = len(_stages(self._vae()))
        if cfg.layer > n_stages:
            raise ConfigError(
                f"layer={cfg.layer}: this VAE's encoder has {n_stages} stages (1 = conv_in, 2.. = down blocks); "
                f"pass a layer in 0..{n_stages} (0 sums them all)."
            )
        depth = n_stages if cfg.layer == 0 else cfg.layer
        with torch.no_grad():
            feats_x = encoder_features(self._vae(), x, depth)
            feats_r = encoder_features(self._vae(), rec, depth)
        pairs = list(zip(feats_x, feats_r, strict=True))
        if cfg.layer:
            pairs = pairs[-1:]
        return torch.stack([_lpips_like(a, b) for a, b in pairs]).sum(0)

    def _fit(self, own: Tensor, negatives: Tensor | None) -> None:
        self.reconstruct(own[:1])  # nothing to learn: check that the VAE takes these images

    def _score(self, x: Tensor) -> Tensor:
        return -self.distances(x).to(torch.float32)
