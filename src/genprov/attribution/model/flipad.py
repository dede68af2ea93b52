"""FLIPAD: single-model attribution by final-layer inversion and anomaly detection.

Laszkiewicz, Ricker, Lederer and Fischer, "Single-Model Attribution of Generative Models Through
Final-Layer Inversion", ICML 2024.

A generator's output is ``x = act(W z + b)`` with ``W`` its last linear layer (``nn.Linear``,
``nn.Conv2d`` or ``nn.ConvTranspose2d``), ``act`` in {tanh, sigmoid, identity} and ``z`` the penultimate
activation. For every sample the attributor recovers ``z`` (paper Sec. 3.2):

1. target ``y = act^-1(clip(x)) - b``;
2. anchor ``z_bar`` = mean penultimate activation over ``n_anchor`` of the owner's samples;
3. ``d`` solves ``min_d 1/2 ||y - W z_bar - W d||^2 + alpha ||d||_1`` (batched, matrix-free FISTA, see
   :mod:`genprov.attribution.model.inversion`), started at ``d = z_bar`` as the original's code does
   (``fista_init="anchor"``; ``"zero"`` is the earlier genprov start), and the feature is ``z = z_bar + d``.

The features go through the shared pipeline of :mod:`genprov.attribution.model.feature_attributor` (max-pooling to
at most ``pool_to`` x ``pool_to``, standardisation ``(z - mu) / (sd + 0.05)`` with own-sample statistics,
optional channel selection) into Deep SAD (paper Sec. 4), thresholded at ``fnr`` (0.5%) on held-out own
samples.

Saturated pixels (a departure from the paper, off by default): 8-bit images of a ``tanh`` generator hold
many pixels at exactly -1 or 1 (codes 0 and 255), for which the paper's target ``atanh(±(1 - 1e-4))``
(about ±4.95) is not the generator's true pre-activation, only a bound on it. ``saturation="censor"``
turns those pixels into one-sided (squared hinge) constraints ``W z + b <= atanh(-1 + 1/255)`` (resp.
``>=``), which keeps the lasso convex and its Lipschitz constant unchanged. On the small digits GANs of
``genprov reproduce flipad`` it is what lets the inversion of the owner's own samples stay consistent,
and the validation study there selects it; the paper's ``"clip"`` stays the default of the class.

Choice of ``alpha``: the paper's scripts use ``alpha = 5e-4`` for image GANs and Stable Diffusion (and
1e-3 .. 1e-5 elsewhere) on the unnormalised objective above (sum over all output entries), which is
this config's default. It is small on purpose: the penalty only picks, among the many ``d`` that
reproduce an under-determined output (``W`` has more columns than rows whenever the penultimate layer is
wider than the image), one close to the anchor; ``max_iter`` and ``tol`` bound the work. The
``genprov reproduce flipad`` report studies alpha and the iteration budget on a validation split.

Supported generators (anything else raises :class:`~genprov.exceptions.ConfigError` naming what is
missing):

* genprov's GANs (:class:`genprov.models.gans.Generator`) and tabular generators
  (:class:`genprov.models.tabular.TabularGenerator`): they expose ``final_layer``, ``final_activation``
  and ``sample_latent``;
* diffusers ``AutoencoderKL`` (Stable Diffusion's VAE): final layer ``decoder.conv_out``, identity
  activation; the anchor comes from decoding the encoded own samples. With the weights of a Stable
  Diffusion model (Table 4 of the paper), fit on its generated images::

      pipe = genprov.models.t2i.load_pipeline("<stable-diffusion folder>")     # or any genprov pipeline
      flipad = FinalLayerInversionAttributor(pipe, FinalLayerInversionAttributorConfig(pool_to=128))
      flipad.fit(sd_images, negatives=real_images)        # (n, 3, 512, 512) in [-1, 1]

  A pipeline stands for its ``vae``. ``genprov reproduce flipad-t2i`` runs this on pipelines trained here
  (own samples vs real images vs another pipeline's), and shows the case it cannot separate by
  construction: another pipeline that shares the VAE (only its U-Net differs) decodes through the same
  ``decoder.conv_out``.

* any ``nn.Module``: name the layer and the activation, e.g.
  ``FinalLayerInversionAttributor(decoder, final_layer="conv_out", activation="identity",
  latent_sampler=lambda n, seed: torch.randn(n, 4, 64, 64, generator=torch.Generator().manual_seed(seed)))``;
  the penultimate activations are captured with a forward hook while the module runs on sampled inputs
  (``latent_sampler``, else the module's own ``sample_latent(n, seed=..., start=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genprov.attribution.model.base import MODEL_ATTRIBUTORS, ModelAttributorConfig
from genprov.attribution.model.feature_attributor import FeatureAttributor, FeatureAttributorConfig
from genprov.attribution.model.inversion import (
    ACTIVATIONS,
    SUPPORTED_LAYERS,
    Activation,
    LinearOperator,
    activation,
    fista_lasso,
    operator_for,
)
from genprov.config import did_you_mean, is_positive_int, require
from genprov.exceptions import ConfigError, DataError, NotFittedError
from genprov.utils.seeding import derive_seed

__all__ = [
    "FISTA_INITS",
    "FLIPAD_IMAGE_SETTINGS",
    "FinalLayerInversionAttributor",
    "FinalLayerInversionAttributorConfig",
    "LatentSampler",
    "autoencoder_of",
    "resolve_final_layer",
]

#: ``(n, seed) -> inputs`` of a generator module (e.g. latent vectors), used to capture activations.
LatentSampler = Callable[[int, int], Tensor]

_VAE_FINAL_LAYER = "decoder.conv_out"
#: Starts of FISTA's deviation ``d`` (see :attr:`FinalLayerInversionAttributorConfig.fista_init`).
FISTA_INITS = ("anchor", "zero")
#: FLIPAD settings for 8-bit images chosen by the study of ``genprov reproduce flipad`` (censored saturated
#: pixels, 300 FISTA iterations, FISTA started at zero), where the config keeps the paper's (``"clip"``,
#: 500 iterations, started at the anchor): ``genprov flipad fit`` and the reproduction start from them. The
#: zero start scored higher on the demo's 16x16 DCGAN against its unseen LSGAN (AUC .90 vs .80 at 300
#: iterations); the reproduction's study compares both starts on its validation split.
FLIPAD_IMAGE_SETTINGS: dict[str, Any] = {"saturation": "censor", "max_iter": 300, "fista_init": "zero"}


@dataclass(frozen=True, kw_only=True)
class FinalLayerInversionAttributorConfig(FeatureAttributorConfig):
    """FLIPAD settings (plus the shared detector pipeline of :class:`FeatureAttributorConfig`).

    Attributes:
        alpha: L1 weight of the lasso on the unnormalised objective (paper: 5e-4 for images).
        max_iter: FISTA iteration cap per sample.
        tol: FISTA stops a sample when ``||d_k+1 - d_k|| <= tol * ||d_k+1||``.
        restart: Adaptive momentum restart in FISTA (same minimiser, fewer iterations).
        saturation: How pixels at the ends of the image range (8-bit codes 0 and 255) enter the data
            term: ``"clip"`` (the paper: ``act^-1`` of the value clipped to ``±(1 - 1e-4)``, an exact
            target) or ``"censor"`` (only a bound: the pre-activation must lie beyond ``act^-1`` of the
            value half a quantisation step inside the range; a one-sided squared loss). Tabular rows
            are never censored.
        fista_init: Where FISTA starts the deviation ``d``: ``"anchor"`` (the original's code: ``d_0 = z_bar``,
            so the iterate ``z = z_bar + d`` starts at ``2 z_bar``; MikeLasz/flipad
            ``src/flipad/optimization.py:481-487,494-520`` passes the anchor as the solver's ``z0`` and adds
            it again to the result) or ``"zero"`` (``d_0 = 0``, ``z`` starts at the anchor; genprov's
            earlier default, kept for the ablation). The lasso is convex, but with a small ``alpha`` on an
            under-determined layer FISTA stops (``tol`` / ``max_iter``) long before the start is forgotten
            in the layer's null space, so the start shapes the features.
        n_anchor: Number of generator samples averaged into the anchor ``z_bar``.
        final_layer: Path of the final linear layer inside the generator (``None``: the generator's
            ``final_layer`` attribute, or ``decoder.conv_out`` for an ``AutoencoderKL``).
        activation: Output activation, ``"tanh"``, ``"sigmoid"`` or ``"identity"`` (``None``: the
            generator's ``final_activation`` attribute, or identity for an ``AutoencoderKL``).
    """

    alpha: float = 5e-4
    max_iter: int = 500
    tol: float = 1e-4
    restart: bool = True
    saturation: str = "clip"
    fista_init: str = "anchor"
    n_anchor: int = 1000
    final_layer: str | None = None
    activation: str | None = None

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "alpha", "a non-negative number (paper: 5e-4)", self.alpha)
        require(is_positive_int(self.max_iter), "max_iter", "a positive integer", self.max_iter)
        require(self.tol >= 0, "tol", "a non-negative number", self.tol)
        require(is_positive_int(self.n_anchor), "n_anchor", "a positive integer", self.n_anchor)
        require(self.saturation in ("clip", "censor"), "saturation", "'clip' or 'censor'", self.saturation)
        require(self.fista_init in FISTA_INITS, "fista_init", "'anchor' (the original) or 'zero'", self.fista_init)
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {', '.join(ACTIVATIONS)} or None; got {self.activation!r}."
                f"{did_you_mean(str(self.activation), ACTIVATIONS)}"
            )


def _is_autoencoder_kl(module: nn.Module) -> bool:
    """Duck-typed diffusers ``AutoencoderKL`` (encode/decode and a decoder ending in ``conv_out``)."""
    decoder = getattr(module, "decoder", None)
    return (
        callable(getattr(module, "encode", None))
        and callable(getattr(module, "decode", None))
        and isinstance(getattr(decoder, "conv_out", None), nn.Module)
    )


def autoencoder_of(generator: Any, method: str | None = None) -> Any:
    """The autoencoder a latent diffusion model's outputs come from.

    Args:
        generator: A text-to-image pipeline (an object whose ``vae`` is a diffusers ``AutoencoderKL``), an
            ``AutoencoderKL``, or any other generator.
        method: When given, anything that is not (or has no) ``AutoencoderKL`` is refused, naming the method.

    Returns:
        The pipeline's ``vae``, else ``generator`` itself.

    Raises:
        ConfigError: With ``method``, no ``AutoencoderKL`` (encode / decode and ``decoder.conv_out``).
    """
    vae = getattr(generator, "vae", None)
    if not isinstance(generator, nn.Module) and isinstance(vae, nn.Module) and _is_autoencoder_kl(vae):
        return vae
    if method is not None and not (isinstance(generator, nn.Module) and _is_autoencoder_kl(generator)):
        raise ConfigError(
            f"{method} needs a latent diffusion model's autoencoder: a diffusers AutoencoderKL (encode, decode, "
            f"decoder.conv_out) or a text-to-image pipeline whose vae is one; got {type(generator).__name__}."
        )
    return generator


def _last_layers(module: nn.Module, k: int = 4) -> str:
    names = [name for name, _ in module.named_modules() if name]
    return ", ".join(repr(n) for n in names[-k:]) or "(none)"


def resolve_final_layer(
    generator: nn.Module | None, final_layer: str | None = None, activation_name: str | None = None
) -> tuple[str, nn.Module, Activation]:
    """Find the final linear layer and output activation FLIPAD inverts.

    Args:
        generator: The generator module.
        final_layer: Submodule path (``None``: ``generator.final_layer``, or ``decoder.conv_out`` of an
            ``AutoencoderKL``).
        activation_name: ``"tanh"``, ``"sigmoid"`` or ``"identity"`` (``None``: ``generator.final_activation``,
            or identity for an ``AutoencoderKL``).

    Returns:
        ``(path, layer, activation)``.

    Raises:
        ConfigError: No generator, no way to find the layer or activation (the message says which
            argument to pass and lists the module's last layers), an unknown path, or an unsupported layer.
    """
    if not isinstance(generator, nn.Module):
        raise ConfigError(
            f"FLIPAD needs the generator (an nn.Module) whose final layer it inverts; got {type(generator).__name__}."
        )
    kind = type(generator).__name__
    vae = _is_autoencoder_kl(generator)
    name = final_layer
    if name is None:
        if isinstance(getattr(generator, "final_layer", None), nn.Module):
            name = "final_layer"
        elif vae:
            name = _VAE_FINAL_LAYER
        else:
            raise ConfigError(
                f"Cannot find the final layer of this {kind}: FLIPAD needs the generator's last linear layer and "
                f"its output activation, and the module has no 'final_layer' attribute. Pass "
                f"final_layer='<submodule path>' (CLI: --set final_layer=...; its last submodules are "
                f"{_last_layers(generator)}) and activation='tanh', 'sigmoid' or 'identity'."
            )
    try:
        layer = generator.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in generator.named_modules() if n]
        raise ConfigError(
            f"final_layer={name!r}: this {kind} has no such submodule.{did_you_mean(name, names)} "
            f"Its last submodules are {_last_layers(generator)}."
        ) from None
    if not isinstance(layer, SUPPORTED_LAYERS):
        raise ConfigError(
            f"The final layer {name!r} of this {kind} is a {type(layer).__name__}; FLIPAD inverts a linear last "
            f"layer: one of {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}. Pass final_layer='<path>' naming "
            "the last such layer (CLI: --set final_layer=...; the activation after it must be tanh, sigmoid or identity)."
        )
    act = activation_name
    if act is None:
        declared = getattr(generator, "final_activation", None)
        if isinstance(declared, str):
            act = declared
        elif vae and name == _VAE_FINAL_LAYER:
            act = "identity"
        else:
            raise ConfigError(
                f"Cannot tell the output activation of this {kind} (no 'final_activation' attribute). Pass "
                "activation='tanh', 'sigmoid' or 'identity' (what follows the final layer)."
            )
    return name, layer, activation(act)


@MODEL_ATTRIBUTORS.register("flipad", config=FinalLayerInversionAttributorConfig)
class FinalLayerInversionAttributor(FeatureAttributor):
    """FLIPAD: Deep SAD on final-layer inversions (Laszkiewicz et al., ICML 2024, Sec. 3-4).

    Args:
        generator: The owner's generator (see the module docstring for what is supported); for a
            text-to-image pipeline, its ``vae`` is taken.
        config: Settings (default: paper defaults, see :class:`FinalLayerInversionAttributorConfig`).
        final_layer: Shortcut for ``config.final_layer`` (must agree with it if both are given).
        activation: Shortcut for ``config.activation``.
        latent_sampler: ``(n, seed) -> inputs`` for a generic ``nn.Module`` without ``sample_latent``.

    Attributes:
        anchor_: (*in_shape) the mean penultimate activation ``z_bar``.
        final_layer_name_: Path of the inverted layer.
        lipschitz_: ``||W||_2^2`` (times 1.02) used as FISTA's step ``1 / L``.

    Example:
        >>> flipad = FinalLayerInversionAttributor(generator).fit(own_images, negatives=real_images)
        >>> flipad.predict(suspect_images)  # (n,) bool; flipad.score_samples gives the scores
    """

    name: ClassVar[str] = "flipad"
    config_class: ClassVar[type[ModelAttributorConfig]] = FinalLayerInversionAttributorConfig
    config: FinalLayerInversionAttributorConfig
    needs_generator: ClassVar[bool] = True
    pool_mode: ClassVar[str] = "max"

    anchor_: Tensor
    final_layer_name_: str
    lipschitz_: float

    def __init__(
        self,
        generator: Any,
        config: FinalLayerInversionAttributorConfig | None = None,
        *,
        final_layer: str | None = None,
        activation: str | None = None,
        latent_sampler: LatentSampler | None = None,
    ) -> None:
        super().__init__(autoencoder_of(generator), config)
        changes: dict[str, Any] = {}
        for field_name, value in (("final_layer", final_layer), ("activation", activation)):
            if value is None:
                continue
            current = getattr(self.config, field_name)
            if current is not None and current != value:
                raise ConfigError(
                    f"{field_name} is given twice with different values: {value!r} (argument) and "
                    f"{current!r} (config). Pass it once."
                )
            changes[field_name] = value
        if changes:
            self.config = self.config.replace(**changes)
        self.latent_sampler = latent_sampler

    # ------------------------------------------------------------------------------------------ set-up

    def _value_range(self) -> tuple[float, float] | None:
        name = self.config.activation or getattr(self.generator, "final_activation", None)
        return (0.0, 1.0) if name == "sigmoid" else (-1.0, 1.0)

    def _prepared(self) -> bool:
        return hasattr(self, "anchor_")

    def _prepare(self, own: Tensor, negatives: Tensor | None) -> None:
        cfg = self.config
        name, layer, act = resolve_final_layer(self.generator, cfg.final_layer, cfg.activation)
        anchor = self._anchor(layer, own)
        self._setup(name, layer, act, anchor, None)

    def _setup(self, name: str, layer: nn.Module, act: Activation, anchor: Tensor, lipschitz: float | None) -> None:
        op = operator_for(layer, tuple(anchor.shape))
        if op.out_dim != math.prod(self.input_shape_):
            raise DataError(
                f"The final layer {name!r} outputs {op.out_shape} ({op.out_dim} values) per sample but the samples "
                f"have shape {self.input_shape_}; pass samples of the generator's output shape."
            )
        self.final_layer_name_ = name
        self._activation = act
        self._operator: LinearOperator = op
        self.anchor_ = anchor
        self.lipschitz_ = op.squared_norm(seed=self.config.seed) * 1.02 if lipschitz is None else lipschitz
        with torch.no_grad():
            self._anchor_out = op.matvec(anchor[None])

    def _anchor(self, layer: nn.Module, own: Tensor) -> Tensor:
        """Mean input of ``layer`` while the generator produces ``n_anchor`` samples (forward hook)."""
        generator = self.generator
        assert generator is not None  # resolve_final_layer checked it
        total: list[Tensor] = []
        count = [0]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            batch = inputs[0].detach().to(torch.float64)
            total.append(batch.sum(0))
            count[0] += batch.shape[0]

        handle = layer.register_forward_hook(hook)
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                for call, inputs in self._generator_calls(generator, own):
                    call(inputs)
        finally:
            handle.remove()
            generator.train(was_training)
        if count[0] == 0:
            raise DataError("No activations were captured for the anchor; the final layer never ran.")
        return (torch.stack(total).sum(0) / count[0]).to(torch.float32)

    def _generator_calls(
        self, generator: nn.Module, own: Tensor
    ) -> Iterator[tuple[Callable[[Tensor], object], Tensor]]:
        """``(function, inputs)`` pairs that each make the generator run its final layer on one batch."""
        cfg = self.config
        seed = derive_seed(cfg.seed, "flipad-anchor")
        sample_latent = getattr(generator, "sample_latent", None)
        starts = range(0, cfg.n_anchor, cfg.batch_size)
        if self.latent_sampler is not None:
            for start in starts:
                yield (
                    generator,
                    self.latent_sampler(min(cfg.batch_size, cfg.n_anchor - start), derive_seed(seed, start)),
                )
        elif callable(sample_latent):
            for start in starts:
                yield generator, sample_latent(min(cfg.batch_size, cfg.n_anchor - start), seed=seed, start=start)
        elif _is_autoencoder_kl(generator):
            encode: Any = getattr(generator, "encode", None)
            decode: Any = getattr(generator, "decode", None)
            images = own[: cfg.n_anchor]
            for start in range(0, len(images), cfg.batch_size):
                yield decode, encode(images[start : start + cfg.batch_size]).latent_dist.mode()
        else:
            raise ConfigError(
                f"FLIPAD cannot draw samples from this {type(generator).__name__} to average its penultimate "
                "activations: it has no sample_latent(n, seed=..., start=...) method. Pass "
                "latent_sampler=lambda n, seed: <inputs of the module> to FinalLayerInversionAttributor."
            )

    # ----------------------------------------------------------------------------------------- features

    def _features(self, x: Tensor) -> Tensor:
        """(n, *input_shape_) samples -> (n, *in_shape) recovered penultimate activations ``z_bar + d``."""
        cfg = self.config
        op = self._operator
        censored = None
        value_range = self._value_range()
        if cfg.saturation == "censor" and x.ndim == 4 and value_range is not None:
            low, high = value_range
            half_step = 0.5 * (high - low) / 255.0
            below = (x <= low + half_step).reshape(len(x), *op.out_shape)
            above = (x >= high - half_step).reshape(len(x), *op.out_shape)
            censored = (below, above)
            x = x.clamp(low + half_step, high - half_step)
        y = self._activation.inverse(x).reshape(len(x), *op.out_shape)
        if op.bias is not None:
            y = y - op.bias
        solution = fista_lasso(
            op,
            y - self._anchor_out,
            cfg.alpha,
            lipschitz=self.lipschitz_,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            restart=cfg.restart,
            init=self.anchor_.expand(len(x), *self.anchor_.shape) if cfg.fista_init == "anchor" else None,
            censored=censored,
        )
        return self.anchor_ + solution.solution

    def reconstruct(self, x: Tensor) -> Tensor:
        """Re-generate samples from their recovered activations: ``act(W (z_bar + d) + b)``.

        Args:
            x: (n, *input_shape_) samples.

        Returns:
            (n, *input_shape_) reconstructions (close to ``x`` for the generator's own samples).

        Raises:
            NotFittedError: Before :meth:`fit` or :meth:`prepare`.
        """
        if not self._prepared():
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call .fit(...) or .prepare(...).")
        checked = self._check_input(x, "x")
        op, bs = self._operator, self.config.batch_size
        parts = []
        with torch.no_grad():
            for i in range(0, len(checked), bs):
                out = op.matvec(self._features(checked[i : i + bs]))
                if op.bias is not None:
                    out = out + op.bias
                parts.append(self._activation.forward(out).reshape(-1, *self.input_shape_))
        return torch.cat(parts)

    # ------------------------------------------------------------------------------------- save / load

    def _feature_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        meta = {
            "final_layer": self.final_layer_name_,
            "activation": self._activation.name,
            "lipschitz": self.lipschitz_,
            "fista_init": self.config.fista_init,
        }
        return meta, {"anchor": self.anchor_}

    def _restore_features(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        if "fista_init" not in meta:  # saved before the option existed: those detectors started FISTA at zero
            self.config = self.config.replace(fista_init="zero")
        name, layer, act = resolve_final_layer(self.generator, str(meta["final_layer"]), str(meta["activation"]))
        self._setup(name, layer, act, tensors["anchor"], float(meta["lipschitz"]))
