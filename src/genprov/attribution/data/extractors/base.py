"""The extractor interface: :class:`FeatureExtractor`, its :class:`ExtractorConfig`, the
:data:`FEATURE_EXTRACTORS` registry, and the helpers every extractor uses (:func:`prepare_images`,
:func:`seeded_init_`).

Extractors are artefacts (:mod:`genprov.models.artifact`, kind ``feature-extractor``):
``save_pretrained(folder)`` writes the config and the weights (a trained SimCLR encoder, a local backbone's
or EfficientNet's weights) or, for a classifier, the checkpoint it was loaded from;
``FeatureExtractor.from_pretrained(folder)`` rebuilds the registered class it names.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained
from genprov.registry import Registry
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator
from genprov.utils.validation import check_images

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "FEATURE_EXTRACTORS",
    "ExtractorConfig",
    "FeatureExtractor",
    "build_extractor",
    "normalize_images",
    "prepare_images",
    "seeded_init_",
]


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


def normalize_images(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(n, C, H, W) images in [-1, 1] mapped to [0, 1], then normalised per channel by ``mean`` and ``std``
    (a backbone's preprocessing, e.g. ImageNet's or CLIP's)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x + 1) / 2 - m) / s


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


class FeatureExtractor(Pretrained, ABC):
    """Maps images to feature vectors: ``extract(images (n, C, H, W) in [-1, 1]) -> (n, d) float32``.

    Subclasses implement :meth:`_forward` (one batch, already checked by :meth:`check_input`) and may
    override :meth:`check_input`, :attr:`dim` and :meth:`weights_fingerprint`; extractors with weights
    override :meth:`_artifact_payload` and :meth:`_restore` so that ``save_pretrained`` /
    ``from_pretrained`` carry them. The constructor stores its arguments only; models are built or loaded
    on first use.
    """

    #: Registry name (recorded in stores and results).
    name: ClassVar[str] = "feature-extractor"
    artifact_kind: ClassVar[str] = "feature-extractor"
    config: ExtractorConfig

    # ------------------------------------------------------------------------------------ save / open

    def _artifact_payload(self) -> ArtifactPayload:
        """What ``save_pretrained`` writes: the config alone (extractors without weights)."""
        return ArtifactPayload(config=self.config)

    def _payload(self) -> ArtifactPayload:
        return self._artifact_payload()

    @classmethod
    def _restore(cls, config: Any, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        """Rebuild from a saved artefact (``config`` already parsed); default: from the config alone."""
        return cls(config=config)  # type: ignore[call-arg]

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            factory = FEATURE_EXTRACTORS.entry(record.method).factory
            config_type = FEATURE_EXTRACTORS.config_type(record.method)
            config = config_type.from_dict(record.config) if config_type is not None else None
        except ConfigError as err:
            raise CheckpointError(f"{record.folder}: {err}") from err
        if not (isinstance(factory, type) and issubclass(factory, cls)):
            raise CheckpointError(
                f"{record.folder} holds a {record.method!r} extractor, which is not a {cls.__name__}."
            )
        return factory._restore(config, record, tensors, wrapped)

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
