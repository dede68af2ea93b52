"""``local-weights``: any :data:`~genprov.attribution.data.extractors.backbones.BACKBONES` module plus a
local weights file (safetensors, or a ``torch.load(weights_only=True)`` state dict): CLIP / DINO / ...
without torchvision; missing or mismatched keys raise a clear CheckpointError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from genprov.attribution.data.extractors.backbones import (
    BACKBONES,
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
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord
from genprov.storage import fingerprint_state

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LocalWeightsConfig", "LocalWeightsExtractor"]


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

    Its artefact holds the loaded weights, so ``from_pretrained`` needs neither the file nor (for a
    :data:`BACKBONES` backbone) the module.
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
            x = normalize_images(x, mean, std)
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

    def _artifact_payload(self) -> ArtifactPayload:
        state = {"custom_module": self.module is not None}
        return ArtifactPayload(config=self.config, state=state, tensors=dict(self._setup().state_dict()))

    @classmethod
    def _restore(cls, config: Any, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        if record.state.get("custom_module") and wrapped is None:
            raise CheckpointError(
                f"The local-weights extractor at {record.folder} wraps a module that is no registered backbone; pass "
                "the same architecture: from_pretrained(folder, module)."
            )
        out = cls(wrapped, config)
        module = wrapped if wrapped is not None else out._build_module()
        load_backbone_weights(module, tensors, where=str(record.folder))
        out.module_ = module.eval()
        return out
