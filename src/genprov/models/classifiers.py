"""A small convolutional image classifier (the model whose explanations ``genprov.privacy`` studies).

Architecture: ``n_conv`` blocks of 3x3 convolution + ReLU, with 2x2 max pooling after each of the first
``n_pool`` blocks (never after the last, so :attr:`CNNClassifier.last_conv` keeps a spatial map of
``image_size / 2**n_pool`` pixels for Grad-CAM), global average pooling, a hidden linear layer + ReLU (:meth:`CNNClassifier.features`), and a linear head (logits).
No BatchNorm or dropout: the model is deterministic in train and eval mode, which keeps LRP rules and
per-example gradients simple.
"""

from __future__ import annotations

import dataclasses
from typing import cast

from torch import Tensor, nn

from genprov.config import Config, is_int, is_positive_int, require

__all__ = ["CNNClassifier", "ClassifierConfig", "build_classifier"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig(Config):
    """Architecture of :class:`CNNClassifier`.

    Attributes:
        image_size: Side of the square input images (at least ``2 ** n_pool``)
        channels: Input channels (1 or 3).
        n_classes: Number of classes (at least 2).
        width: Feature maps of the first conv layer; each later block has twice as many.
        n_conv: Number of conv blocks (at least 2).
        n_pool: Number of 2x2 max-pooling steps, after the first ``n_pool`` blocks (at most ``n_conv - 1``).
        feature_dim: Size of the penultimate (feature) vector.
    """

    image_size: int = 8
    channels: int = 1
    n_classes: int = 10
    width: int = 32
    n_conv: int = 3
    n_pool: int = 1
    feature_dim: int = 64

    def validate(self) -> None:
        require(is_positive_int(self.n_conv) and self.n_conv >= 2, "n_conv", "an integer >= 2", self.n_conv)
        require(
            is_int(self.n_pool) and 0 <= self.n_pool < self.n_conv,
            "n_pool",
            f"an integer in [0, n_conv - 1 = {self.n_conv - 1}]",
            self.n_pool,
        )
        require(
            is_positive_int(self.image_size) and self.image_size >= 2**self.n_pool,
            "image_size",
            f"an integer >= {2**self.n_pool} for n_pool={self.n_pool}",
            self.image_size,
        )
        require(self.channels in (1, 3), "channels", "1 (grey) or 3 (RGB)", self.channels)
        require(is_positive_int(self.n_classes) and self.n_classes >= 2, "n_classes", "an integer >= 2", self.n_classes)
        require(is_positive_int(self.width), "width", "a positive integer", self.width)
        require(is_positive_int(self.feature_dim), "feature_dim", "a positive integer", self.feature_dim)


class CNNClassifier(nn.Module):
    """Conv blocks -> global average pool -> hidden linear + ReLU -> linear logits.

    Args:
        config: The architecture.

    Attributes:
        conv: ``nn.Sequential`` of the conv blocks (Conv2d, ReLU, MaxPool2d, ...).
        last_conv: The last ``nn.Conv2d`` (the Grad-CAM target layer; a property, so it is stored
            once, as part of ``conv``).
        hidden: Linear layer producing the features.
        head: Linear layer producing the logits.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.channels
        for i in range(config.n_conv):
            c_out = config.width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if i < config.n_pool:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self._last_conv_index = max(i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(c_in, config.feature_dim)
        self.act = nn.ReLU()
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The last ``nn.Conv2d`` of :attr:`conv` (the Grad-CAM target layer; followed by a ReLU)."""
        return cast(nn.Conv2d, self.conv[self._last_conv_index])

    def features(self, x: Tensor) -> Tensor:
        """Penultimate vectors.

        Args:
            x: (n, channels, image_size, image_size) images in [-1, 1].

        Returns:
            (n, feature_dim) non-negative features (the input of :attr:`head`).
        """
        out: Tensor = self.act(self.hidden(self.pool(self.conv(x)).flatten(1)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: (n, channels, image_size, image_size) images in [-1, 1].

        Returns:
            (n, n_classes) logits.
        """
        out: Tensor = self.head(self.features(x))
        return out


def build_classifier(config: ClassifierConfig) -> dict[str, nn.Module]:
    """Fresh ``{"classifier": CNNClassifier(config)}`` (the checkpoint module name)."""
    return {"classifier": CNNClassifier(config)}
