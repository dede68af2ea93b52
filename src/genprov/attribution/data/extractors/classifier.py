"""``classifier``: the penultimate features of a genprov CNN classifier (passed in, or loaded
from a checkpoint folder).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, cast

from torch import Tensor, nn

if TYPE_CHECKING:
    from typing_extensions import Self

from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
    prepare_images,
)
from genprov.config import require
from genprov.exceptions import CheckpointError, ConfigError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord
from genprov.models.checkpoints import load_checkpoint
from genprov.storage import fingerprint_state

__all__ = ["ClassifierExtractor", "ClassifierFeaturesConfig"]


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

    Images must have the classifier's size; grey images are replicated for an RGB classifier. Its artefact
    records the classifier's checkpoint (and fingerprint), which ``from_pretrained`` reopens.
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

    def _artifact_payload(self) -> ArtifactPayload:
        return ArtifactPayload(config=self.config, wraps={"classifier": self._model()})

    @classmethod
    def _restore(cls, config: Any, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        return cls(record.wrapped("classifier", wrapped), config)
