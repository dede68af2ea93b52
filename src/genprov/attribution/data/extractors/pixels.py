"""``pixels``: the raw pixels, flattened (the baseline)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
)

__all__ = ["PixelExtractor", "PixelsConfig"]


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
