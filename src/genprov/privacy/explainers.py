"""Explainers of image classifiers: input gradient, Grad-CAM and layer-wise relevance propagation (LRP).

These are the three explanation methods GNIME (Jeong et al., NeurIPS 2022, "Learning to Generate
Inversion-Resistant Model Explanations", Sec. 5) releases next to a classifier's prediction, and whose
leakage the inversion attacks in :mod:`genprov.privacy.attacks` measure.

Every explainer takes ``(model, config)`` and offers

* :meth:`Explainer.attribute`: the raw, signed attribution of the target class (the method's own output);
* :meth:`Explainer.explain`: the released map, (n, 1, H, W) with the input's spatial shape, post-processed
  as in the paper: channels summed, absolute value, then min-max scaled per image to [0, 1]
  (``postprocess=False`` returns the signed channel sum instead);
* :meth:`Explainer.predict`: the released prediction vector (softmax probabilities);
* :meth:`Explainer.observe`: both at once, as :class:`Observations` (what an inversion attack sees).

Inputs are cast to the model's dtype (float32 unless the model was converted with ``.double()``), and
results come back on the CPU in that dtype. The target class defaults to the model's prediction (the
maximal logit). Explanations are computed in
batches of ``config.batch_size`` and do not depend on the batch composition (except Grad-CAM with the
original's ``pool_over_batch=True``). The model should be in eval mode; the explainers never change it.

Registered methods (:data:`EXPLAINERS`):

* ``gradient``: ``d logit_target / d x`` (Simonyan et al., 2014), the same as captum's ``Saliency`` with
  ``abs=False``.
* ``grad-cam``: Selvaraju et al. (2017): ``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of
  ``d logit_target / d A_k`` *per sample*, upsampled to the input size. ``A`` is the output of the last
  ``nn.Conv2d`` (found automatically, or named by ``config.layer``), taken after its ReLU when one directly
  follows, as in the original Keras models where the activation is part of the conv layer. The original
  GNIME code averaged the gradients over the whole batch; that is available only as the explicit flag
  ``pool_over_batch=True``.
* ``lrp``: Bach et al. (2015) / Montavon et al. (2019), "LRP-z+" with the bias excluded (equivalently
  alpha=1, beta=0 without bias) in every weighted layer, the flat rule at the input layer (the first
  weighted layer: relevance is spread uniformly over each neuron's receptive field, so it does not depend
  on the sign of the pixels), winner-take-all redistribution through max pooling, proportional
  redistribution through average pooling, and pass-through for element-wise layers. ``rule="epsilon"``
  gives LRP-epsilon (bias included) instead; ``lrp-epsilon`` is the same method with that default.
  Implemented here (no zennit); supports ``Conv2d``, ``Linear``, ``ReLU``, ``LeakyReLU``, ``MaxPool2d``,
  ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``Dropout``, ``BatchNorm1d/2d`` and ``Identity``
  inside an ``nn.Sequential`` or a genprov :class:`~genprov.models.classifiers.CNNClassifier`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, is_positive_int, require
from genprov.exceptions import ConfigError, DataError
from genprov.models.classifiers import CNNClassifier
from genprov.registry import Registry
from genprov.utils.validation import check_images

__all__ = [
    "EXPLAINERS",
    "Explainer",
    "ExplainerConfig",
    "GradCAMConfig",
    "GradCAMExplainer",
    "GradientExplainer",
    "LRPConfig",
    "LRPEpsilonConfig",
    "LRPExplainer",
    "Observations",
    "lrp_layers",
    "postprocess_maps",
]

#: Every explainer, by kebab-case name: ``EXPLAINERS.create("grad-cam", model, config=GradCAMConfig())``.
EXPLAINERS: Registry[Explainer] = Registry("explainer")

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


# --------------------------------------------------------------------------------------------- basics


@dataclasses.dataclass(frozen=True)
class Observations:
    """What a released explanation service shows an attacker for a batch of private inputs.

    Attributes:
        explanations: (n, 1, H, W) post-processed (or defended) explanation maps, or ``None`` when only
            predictions are released.
        predictions: (n, n_classes) prediction vectors (softmax probabilities).
    """

    explanations: Tensor | None
    predictions: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.predictions, Tensor) or self.predictions.ndim != 2:
            got = tuple(self.predictions.shape) if isinstance(self.predictions, Tensor) else type(self.predictions)
            raise DataError(f"predictions must be a (n, n_classes) tensor; got {got}.")
        if self.explanations is not None:
            e = self.explanations
            if not isinstance(e, Tensor) or e.ndim != 4:
                got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                raise DataError(f"explanations must be a (n, 1, H, W) tensor; got {got}.")
            if len(e) != len(self.predictions):
                raise DataError(
                    f"explanations and predictions must describe the same inputs; got {len(e)} explanations "
                    f"and {len(self.predictions)} prediction vectors."
                )

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, index: Tensor | np.ndarray | slice | list[int]) -> Observations:
        """The observations of a subset of the inputs (``index``: indices, a bool mask or a slice)."""
        expl = self.explanations[index] if self.explanations is not None else None
        return Observations(explanations=expl, predictions=self.predictions[index])

    def with_explanations(self, explanations: Tensor | None) -> Observations:
        """The same predictions with other (e.g. defended) explanations."""
        return Observations(explanations=explanations, predictions=self.predictions)

    @staticmethod
    def concat(parts: list[Observations]) -> Observations:
        """Concatenate observations of several batches (all with or all without explanations)."""
        if not parts:
            raise DataError("Observations.concat needs at least one part.")
        has = [p.explanations is not None for p in parts]
        if any(has) and not all(has):
            raise DataError("Cannot concatenate observations with and without explanations.")
        expl = torch.cat([cast(Tensor, p.explanations) for p in parts]) if all(has) else None
        return Observations(explanations=expl, predictions=torch.cat([p.predictions for p in parts]))


def postprocess_maps(maps: Tensor) -> Tensor:
    """The paper's post-processing: sum over channels, absolute value, per-image min-max to [0, 1].

    Args:
        maps: (n, C, H, W) raw signed attributions.

    Returns:
        (n, 1, H, W) maps in [0, 1] (float32, or float64 for float64 input); an image whose map is constant
        gets all zeros.
    """
    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    m = maps.detach().to(dtype).sum(dim=1, keepdim=True).abs()
    flat = m.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (m - lo) / safe, torch.zeros_like(m))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExplainerConfig(Config):
    """Settings shared by every explainer.

    Attributes:
        batch_size: Inputs per forward/backward pass (does not change the maps, except Grad-CAM with
            ``pool_over_batch``).
    """

    batch_size: int = 256

    def validate(self) -> None:
        require(is_positive_int(self.batch_size), "batch_size", "a positive integer", self.batch_size)


class Explainer(ABC):
    """An explanation method for an image classifier (``model(x) -> (n, n_classes)`` logits).

    Args:
        model: The classifier explained.
        config: The method's config (default: its defaults).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ExplainerConfig]] = ExplainerConfig

    def __init__(self, model: nn.Module, config: ExplainerConfig | None = None) -> None:
        if config is not None and not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}; got {type(config).__name__}."
            )
        self.model = model
        self.config = config if config is not None else self.config_class()

    # ------------------------------------------------------------------------------------ subclass hook

    @abstractmethod
    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """(n, C, H, W) checked inputs and (n,) target classes -> (n, C', H, W) raw attributions."""

    # ----------------------------------------------------------------------------------------- helpers

    def _input_channels(self) -> int | None:
        """Channels the model takes: its config's ``channels``, else its first convolution's (``None``: unknown)."""
        channels = getattr(getattr(self.model, "config", None), "channels", None)
        if isinstance(channels, int):
            return channels
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return int(module.in_channels)
        return None

    def _check(self, x: object, target: Tensor | None) -> tuple[Tensor, Tensor | None]:
        checked = check_images(x, "x", value_range=None).detach().to(self._dtype())
        channels = self._input_channels()
        if channels is not None and checked.shape[1] != channels:
            raise DataError(
                f"x has {checked.shape[1]} channel(s) but the {type(self.model).__name__} explained takes "
                f"{channels}-channel images; convert the images ({'grey' if channels == 1 else 'RGB'}) or explain "
                "a classifier trained on such images."
            )
        if target is not None:
            if not isinstance(target, Tensor) or target.ndim != 1 or len(target) != len(checked):
                got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
                raise DataError(f"target must be a (n,) = ({len(checked)},) tensor of class indices; got {got}.")
            if target.is_floating_point():
                raise DataError(f"target must hold integer class indices; got dtype {target.dtype}.")
            target = target.to(torch.int64)
        return checked, target

    def _dtype(self) -> torch.dtype:
        """The model's floating dtype (float32 unless the model was converted, e.g. ``.double()``)."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _logits(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if not isinstance(out, Tensor) or out.ndim != 2:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise DataError(f"{type(self.model).__name__} must return (n, n_classes) logits; got {got}.")
        return out

    def _batched(self, x: Tensor, target: Tensor | None, fn: Callable[[Tensor, Tensor | None], Tensor]) -> Tensor:
        bs = self.config.batch_size
        parts = []
        for i in range(0, len(x), bs):
            t = target[i : i + bs] if target is not None else None
            parts.append(fn(x[i : i + bs], t))
        if not parts:
            raise DataError("x is empty; pass at least one image.")
        return torch.cat(parts)

    def _attribute_batch(self, x: Tensor, target: Tensor | None) -> Tensor:
        dev = self._device()
        x = x.to(dev)
        with torch.no_grad():
            logits = self._logits(x)
        n_classes = int(logits.shape[1])
        target = logits.argmax(dim=1) if target is None else target.to(dev)
        if int(target.min()) < 0 or int(target.max()) >= n_classes:
            raise DataError(
                f"target must hold class indices in [0, {n_classes}); got values in "
                f"[{int(target.min())}, {int(target.max())}]."
            )
        return self._attribute(x, target).detach().to("cpu")

    # ------------------------------------------------------------------------------------- public API

    def attribute(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """Raw signed attribution of the target class.

        Args:
            x: (n, C, H, W) float images (genprov images are in [-1, 1]).
            target: (n,) class indices; default: the model's predicted classes (maximal logit).

        Returns:
            (n, C, H, W) for ``gradient`` and ``lrp``; (n, 1, H, W) for ``grad-cam``; in the model's dtype
            (float32 by default), on the CPU.

        Raises:
            DataError: Wrong shape or dtype, NaN values, or target classes out of range.
        """
        checked, tgt = self._check(x, target)
        return self._batched(checked, tgt, self._attribute_batch)

    def explain(self, x: Tensor, target: Tensor | None = None, *, postprocess: bool = True) -> Tensor:
        """The released explanation map.

        Args:
            x: (n, C, H, W) float images.
            target: (n,) class indices; default: the predicted classes.
            postprocess: Apply the paper's post-processing (:func:`postprocess_maps`: channel sum, absolute
                value, per-image min-max to [0, 1]); ``False`` returns the signed channel sum.

        Returns:
            (n, 1, H, W) maps in the model's dtype (float32 by default), in [0, 1] when ``postprocess``.
        """
        raw = self.attribute(x, target)
        return postprocess_maps(raw) if postprocess else raw.sum(dim=1, keepdim=True)

    def explain_raw(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """``explain(x, target, postprocess=False)``: (n, 1, H, W) signed channel sum of :meth:`attribute`."""
        return self.explain(x, target, postprocess=False)

    def predict(self, x: Tensor) -> Tensor:
        """The released prediction vectors.

        Args:
            x: (n, C, H, W) float images.

        Returns:
            (n, n_classes) float32 softmax probabilities.
        """
        checked, _ = self._check(x, None)
        dev = self._device()

        def run(batch: Tensor, _: Tensor | None) -> Tensor:
            with torch.no_grad():
                return F.softmax(self._logits(batch.to(dev)), dim=1).to("cpu", torch.float32)

        return self._batched(checked, None, run)

    def observe(self, x: Tensor, target: Tensor | None = None) -> Observations:
        """Explanations and predictions of ``x``: what an attacker querying the service sees.

        Args:
            x: (n, C, H, W) float images.
            target: (n,) class indices to explain; default: the predicted classes.

        Returns:
            :class:`Observations` with (n, 1, H, W) explanations from :meth:`explain` and (n, n_classes)
            probabilities.
        """
        return Observations(explanations=self.explain(x, target), predictions=self.predict(x))

    def describe(self) -> dict[str, object]:
        """``{"name": ..., "config": {...}}`` (what defenses record when they are saved)."""
        return {"name": self.name, "config": self.config.to_dict()}


# ------------------------------------------------------------------------------------------ gradient


@EXPLAINERS.register("gradient", config=ExplainerConfig)
class GradientExplainer(Explainer):
    """Input gradient of the target logit, ``d logit_target / d x`` (Simonyan et al., 2014).

    Args:
        model: The classifier.
        config: Batch size.
    """

    name = "gradient"

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        inp = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self._logits(inp)
            (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inp)
        return grad


# ------------------------------------------------------------------------------------------ Grad-CAM


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradCAMConfig(ExplainerConfig):
    """Grad-CAM settings.

    Attributes:
        layer: Name of the module whose output is the feature map ``A`` (as in ``model.named_modules()``,
            e.g. ``"conv.6"``); ``None``: the last ``nn.Conv2d``, or the ReLU / LeakyReLU that directly
            follows it in its ``nn.Sequential``.
        upsample: Interpolation of the map to the input size: ``"bilinear"`` or ``"nearest"``.
        relu: Apply the ReLU of Grad-CAM to the weighted sum (the paper's definition).
        pool_over_batch: Average the gradients over the whole batch as well as over space (one set of
            channel weights for every image, as the original GNIME code did). Off by default: the maps then
            depend on which images share a batch.
    """

    layer: str | None = None
    upsample: Literal["bilinear", "nearest"] = "bilinear"
    relu: bool = True
    pool_over_batch: bool = False

    def validate(self) -> None:
        super().validate()
        require(self.layer is None or isinstance(self.layer, str), "layer", "a module name or None", self.layer)
        require(self.upsample in ("bilinear", "nearest"), "upsample", "'bilinear' or 'nearest'", self.upsample)


def _find_gradcam_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise ConfigError(
                f"layer {name!r} is not a module of {type(model).__name__}; its conv layers are "
                f"{convs or 'none'} (names as in model.named_modules())."
            )
        return name, modules[name]
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            f"Grad-CAM needs a convolutional layer, but model {type(model).__name__} has no nn.Conv2d. "
            "Use the 'gradient' or 'lrp' explainer for this model, or name a layer with spatial output "
            "via GradCAMConfig(layer=...)."
        )
    last = convs[-1]
    parent_name, _, child = last.rpartition(".")
    parent = modules[parent_name] if parent_name else model
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        pos = names.index(child)
        if pos + 1 < len(names) and isinstance(parent[pos + 1], _ACTIVATIONS):
            act_name = f"{parent_name}.{names[pos + 1]}" if parent_name else names[pos + 1]
            return act_name, modules[act_name]
    return last, modules[last]


@EXPLAINERS.register("grad-cam", config=GradCAMConfig)
class GradCAMExplainer(Explainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017), upsampled to the input size.

    Args:
        model: The classifier (needs a layer with (n, K, h, w) output, e.g. a ``nn.Conv2d``).
        config: Layer, interpolation, ReLU and batch pooling.

    Raises:
        ConfigError: (on use) when the model has no ``nn.Conv2d`` and no layer is named, or the named
            layer does not exist.
    """

    name = "grad-cam"
    config: GradCAMConfig
    config_class = GradCAMConfig

    @property
    def layer_name(self) -> str:
        """Name of the module whose output is Grad-CAM's feature map."""
        return _find_gradcam_layer(self.model, self.config.layer)[0]

    @property
    def layer(self) -> nn.Module:
        """The module whose output is Grad-CAM's feature map (pass it to captum's ``LayerGradCam``)."""
        return _find_gradcam_layer(self.model, self.config.layer)[1]

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        name, layer = _find_gradcam_layer(self.model, self.config.layer)
        store: list[Tensor] = []

        def hook(_: nn.Module, __: object, out: object) -> None:
            store.append(cast(Tensor, out))

        handle = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = self._logits(x)
                if len(store) != 1 or store[0].ndim != 4:
                    got = tuple(store[0].shape) if store else "no output (the layer was not called)"
                    raise ConfigError(
                        f"Grad-CAM's layer {name!r} of {type(self.model).__name__} must produce one "
                        f"(n, K, h, w) feature map per forward pass; got {got}. Name a conv layer."
                    )
                acts = store[0]
                (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), acts)
        finally:
            handle.remove()
        dims = (0, 2, 3) if self.config.pool_over_batch else (2, 3)
        weights = grads.mean(dim=dims, keepdim=True)
        cam = (weights * acts).sum(dim=1, keepdim=True).detach()
        if self.config.relu:
            cam = F.relu(cam)
        size = (int(x.shape[2]), int(x.shape[3]))
        if tuple(cam.shape[2:]) != size:
            if self.config.upsample == "bilinear":
                cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
            else:
                cam = F.interpolate(cam, size=size, mode="nearest")
        return cam


# ------------------------------------------------------------------------------------------------ LRP


@dataclasses.dataclass(frozen=True, kw_only=True)
class LRPConfig(ExplainerConfig):
    """LRP settings.

    Attributes:
        rule: Rule of the weighted layers above the input layer: ``"z-plus"`` (positive contributions
            only, bias excluded) or ``"epsilon"`` (all contributions and the bias, stabilised by
            ``epsilon``).
        input_rule: Rule of the first weighted layer: ``"flat"`` (uniform over the receptive field) or
            ``"same"`` (the same rule as the other layers).
        epsilon: Stabiliser of the epsilon rule (``z + epsilon * sign(z)`` in the denominator).
    """

    rule: Literal["z-plus", "epsilon"] = "z-plus"
    input_rule: Literal["flat", "same"] = "flat"
    epsilon: float = 0.01

    def validate(self) -> None:
        super().validate()
        require(self.rule in ("z-plus", "epsilon"), "rule", "'z-plus' or 'epsilon'", self.rule)
        require(self.input_rule in ("flat", "same"), "input_rule", "'flat' or 'same'", self.input_rule)
        require(
            isinstance(self.epsilon, (int, float)) and self.epsilon > 0, "epsilon", "a positive number", self.epsilon
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LRPEpsilonConfig(LRPConfig):
    """:class:`LRPConfig` with the epsilon rule as default (the ``lrp-epsilon`` explainer)."""

    rule: Literal["z-plus", "epsilon"] = "epsilon"


_LRP_SUPPORTED = (
    nn.Conv2d,
    nn.Linear,
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Identity,
)


def _flatten_sequential(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, module in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            out += _flatten_sequential(module, f"{full}.")
        else:
            out.append((full, module))
    return out


def lrp_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as the flat list of ``(name, layer)`` that LRP walks, checked for supported layers.

    Args:
        model: An ``nn.Sequential`` (nested ones are flattened) or a genprov ``CNNClassifier`` (its conv
            blocks, global average pooling, flattening, hidden layer, ReLU and head).

    Returns:
        ``[(name, module), ...]`` in forward order (a ``CNNClassifier``'s flattening is ``"flatten"``).

    Raises:
        ConfigError: The model is of another kind, or a layer has no LRP rule (the message names it).
    """
    if isinstance(model, CNNClassifier):
        layers = [
            *_flatten_sequential(model.conv, "conv."),
            ("pool", model.pool),
            ("flatten", nn.Flatten()),
            ("hidden", model.hidden),
            ("act", model.act),
            ("head", model.head),
        ]
    elif isinstance(model, nn.Sequential):
        layers = _flatten_sequential(model, "")
    else:
        raise ConfigError(
            f"LRP needs the model as a sequence of layers: an nn.Sequential or a genprov CNNClassifier; got "
            f"{type(model).__name__}. Rewrite the model as an nn.Sequential, or use the 'gradient' explainer."
        )
    for name, module in layers:
        if not isinstance(module, _LRP_SUPPORTED):
            supported = ", ".join(t.__name__ for t in _LRP_SUPPORTED)
            raise ConfigError(
                f"LRP has no rule for layer {name!r} ({type(module).__name__}) of {type(model).__name__}. "
                f"Supported layers: {supported}. Use the 'gradient' or 'grad-cam' explainer for this model."
            )
        if isinstance(module, nn.MaxPool2d) and (module.dilation not in (1, (1, 1))):
            raise ConfigError(f"LRP supports MaxPool2d without dilation; layer {name!r} has {module.dilation}.")
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for _, m in layers):
        raise ConfigError(f"LRP needs at least one Conv2d or Linear layer; {type(model).__name__} has none.")
    return layers


def _with_weight(module: nn.Conv2d | nn.Linear, weight: Tensor, bias: bool) -> Callable[[Tensor], Tensor]:
    b = module.bias if (bias and module.bias is not None) else None
    if isinstance(module, nn.Linear):
        return lambda a: F.linear(a, weight, b)
    if module.padding_mode != "zeros":
        raise ConfigError(f"LRP supports Conv2d with zero padding only; got padding_mode={module.padding_mode!r}.")
    return lambda a: F.conv2d(a, weight, b, module.stride, module.padding, module.dilation, module.groups)


def _safe_div(r: Tensor, z: Tensor) -> Tensor:
    """``r / z`` where ``z != 0``, else 0 (relevance of neurons with no contribution cannot be passed on)."""
    nz = z != 0
    return torch.where(nz, r / torch.where(nz, z, torch.ones_like(z)), torch.zeros_like(r))


def _redistribute(fn: Callable[[Tensor], Tensor], a: Tensor, s: Tensor) -> Tensor:
    """``a * (J_fn(a)^T s)``: each input's share of ``sum_j z_ij s_j`` for a linear ``fn`` (z_ij = a_i w_ij)."""
    inp = a.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(inp)
        (c,) = torch.autograd.grad(out, inp, grad_outputs=s)
    return a * c


def _lrp_weighted(
    module: nn.Conv2d | nn.Linear, a: Tensor, r: Tensor, *, rule: str, first: bool, cfg: LRPConfig
) -> Tensor:
    if first and cfg.input_rule == "flat":
        ones_w = torch.ones_like(module.weight)
        fn = _with_weight(module, ones_w, bias=False)
        ones = torch.ones_like(a)
        z = fn(ones)
        return _redistribute(fn, ones, _safe_div(r, z))
    if rule == "z-plus":
        w_pos, w_neg = module.weight.clamp(min=0), module.weight.clamp(max=0)
        f_pos, f_neg = _with_weight(module, w_pos, bias=False), _with_weight(module, w_neg, bias=False)
        a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
        z = f_pos(a_pos) + f_neg(a_neg)
        s = _safe_div(r, z)
        return _redistribute(f_pos, a_pos, s) + _redistribute(f_neg, a_neg, s)
    fn_b = _with_weight(module, module.weight, bias=True)
    z = fn_b(a)
    z = z + cfg.epsilon * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return _redistribute(_with_weight(module, module.weight, bias=False), a, r / z)


def _lrp_avgpool(module: nn.Module, a: Tensor, r: Tensor, *, rule: str, cfg: LRPConfig) -> Tensor:
    if rule == "z-plus":
        a_pos = a.clamp(min=0)
        z = module(a_pos)  # average pooling has positive weights only: negative inputs contribute nothing positive
        return _redistribute(module, a_pos, _safe_div(r, z))
    z = module(a)
    z = z + cfg.epsilon * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return _redistribute(module, a, r / z)


def _lrp_maxpool(module: nn.MaxPool2d, a: Tensor, r: Tensor) -> Tensor:
    """Winner-take-all: each window's relevance goes to the position of its maximum (exactly conserved)."""
    _, idx = F.max_pool2d(
        a,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )
    n, c = a.shape[:2]
    out = torch.zeros(n, c, a.shape[2] * a.shape[3], dtype=r.dtype, device=r.device)
    out.scatter_add_(2, idx.reshape(n, c, -1), r.reshape(n, c, -1))
    return out.view_as(a)


def _lrp_batchnorm(
    module: nn.BatchNorm1d | nn.BatchNorm2d, a: Tensor, r: Tensor, *, rule: str, cfg: LRPConfig
) -> Tensor:
    """Element-wise affine ``y = w a + b`` (eval statistics): pass-through without bias, epsilon with it."""
    if rule == "z-plus":
        return r
    if module.running_mean is None or module.running_var is None:
        raise ConfigError("LRP-epsilon needs BatchNorm layers with running statistics (track_running_stats=True).")
    shape = (1, -1) + (1,) * (a.ndim - 2)
    scale = 1.0 / torch.sqrt(module.running_var + module.eps)
    w = scale if module.weight is None else module.weight * scale
    b = -module.running_mean * w if module.bias is None else module.bias - module.running_mean * w
    z_in = a * w.view(shape)
    z = z_in + b.view(shape)
    z = z + cfg.epsilon * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return z_in * r / z


@EXPLAINERS.register("lrp", config=LRPConfig)
class LRPExplainer(Explainer):
    """Layer-wise relevance propagation (z+ with the flat rule at the input, or epsilon).

    The relevance of the output layer is the target logit (zero for the other classes); it is
    propagated layer by layer back to the input. With the z+ rule the total relevance is conserved
    (sum of the input relevance = target logit) wherever every neuron that receives relevance has a
    positive contribution from its inputs.

    Args:
        model: An ``nn.Sequential`` or a genprov ``CNNClassifier`` made of supported layers (see the module
            docstring); Dropout and BatchNorm are treated with eval semantics.
        config: Rules and epsilon.

    Raises:
        ConfigError: (on use) an unsupported model or layer, naming it.
    """

    name = "lrp"
    config: LRPConfig
    config_class = LRPConfig

    def relevance(self, x: Tensor, target: Tensor | None = None) -> list[tuple[str, Tensor]]:
        """Relevance at the input of every layer, for inspection and conservation checks.

        Args:
            x: (n, C, H, W) float images.
            target: (n,) class indices; default: the predicted classes.

        Returns:
            ``[(layer name, relevance at its input), ...]`` in forward order, then ``("output", R_out)``.
        """
        checked, tgt = self._check(x, target)
        dev = self._device()
        checked = checked.to(dev)
        if tgt is None:
            with torch.no_grad():
                tgt = self._logits(checked).argmax(1)
        return self._propagate(checked, tgt.to(dev))

    def _propagate(self, x: Tensor, target: Tensor) -> list[tuple[str, Tensor]]:
        cfg = self.config
        layers = lrp_layers(self.model)
        acts = [x]
        with torch.no_grad():
            for _, module in layers:
                if isinstance(module, (nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d)):
                    was = module.training
                    module.eval()
                    try:
                        acts.append(module(acts[-1]))
                    finally:
                        module.train(was)
                else:
                    acts.append(module(acts[-1]))
        out = acts[-1]
        if out.ndim != 2:
            raise ConfigError(
                f"LRP's last layer must output (n, n_classes) logits; {type(self.model).__name__}'s layers end "
                f"with shape {tuple(out.shape)}."
            )
        r = torch.zeros_like(out)
        r.scatter_(1, target[:, None], out.gather(1, target[:, None]))
        first = next(i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear)))
        record: list[tuple[str, Tensor]] = [("output", r)]
        for i in range(len(layers) - 1, -1, -1):
            name, module = layers[i]
            a = acts[i]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                r = _lrp_weighted(module, a, r, rule=cfg.rule, first=(i == first), cfg=cfg)
            elif isinstance(module, nn.MaxPool2d):
                r = _lrp_maxpool(module, a, r)
            elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                r = _lrp_avgpool(module, a, r, rule=cfg.rule, cfg=cfg)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                r = _lrp_batchnorm(module, a, r, rule=cfg.rule, cfg=cfg)
            else:  # ReLU, LeakyReLU, Dropout, Identity, Flatten: element-wise or reshaping
                r = r.reshape(a.shape)
            record.append((name, r.detach()))
        record.reverse()
        return record

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return self._propagate(x, target)[0][1]


EXPLAINERS.register("lrp-epsilon", config=LRPEpsilonConfig)(LRPExplainer)
