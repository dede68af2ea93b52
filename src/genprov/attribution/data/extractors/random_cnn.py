"""``random-cnn``: a randomly initialised, seeded conv encoder (the negative control)."""

from __future__ import annotations

import dataclasses
from typing import cast

from torch import Tensor

from genprov.attribution.data.extractors.backbones import (
    ConvEncoder,
)
from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
    prepare_images,
    seeded_init_,
)
from genprov.config import is_int, is_positive_int, require

__all__ = ["RandomCNNConfig", "RandomCNNExtractor"]


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
