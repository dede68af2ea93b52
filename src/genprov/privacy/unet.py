"""GNIME's noise generator as the original builds it: the ExpMI U-Net with a dense bottleneck.

Jeong et al.'s code (WSP-LAB/GNIME, ``scripts/models.py``) uses one architecture, ``ExpMI`` (lines 49-90),
for the attacker, the defender's surrogate inverter and the noise generator (``GNIME.noiser``, lines
149-154). :class:`ExpMIUNet` follows it, scaled to any map size:

* **encoder** (models.py:53-59): 3x3 conv + ReLU, then 2x2 max-pooling, while the side is above 2; the
  channels double at every level (``bottleneck_size // side`` there: 64, 128, 256, 512 at 32x32, i.e.
  ``width = 64``). Odd sides are pooled with ceil (28 -> 14 -> 7 -> 4 -> 2), which the original, built for
  powers of two, never meets;
* **dense bottleneck** (models.py:62-72): the pooled features -> Dense(64) + ReLU, concatenated with the
  flattened input map itself and the prediction vector -> Dense + ReLU, reshaped to 1x1 and upsampled to
  the deepest encoder level. The original's Dense has ``bottleneck_size // 4 = 512`` units, the deepest
  encoder level's channels at 32x32; here it is the deepest level's channels at every size;
* **decoder** (models.py:75-86, 39-47): at every level the upsampled features are concatenated with the
  encoder's conv output (skip connection), 3x3 conv + ReLU with half the level's channels, upsampling; the
  last level ends in a linear 3x3 conv to ``out_channels``.

The output is the defended map itself (the original's noiser outputs ``xai2``, models.py:172), not an
additive residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.exceptions import DataError

__all__ = ["DENSE_FEATURES", "ExpMIUNet"]

#: Units of the dense layer that reads the pooled encoder features (the original's Dense(64), models.py:63).
DENSE_FEATURES = 64


class ExpMIUNet(nn.Module):
    """ExpMI-style U-Net from a map (n, C_in, H, W) and a prediction vector (n, K) to a map (n, C_out, H, W).

    Args:
        in_channels: Channels of the input maps.
        out_channels: Channels of the output maps.
        size: ``(H, W)`` of the maps (both at least 3).
        n_classes: Length of the prediction vector.
        width: Channels of the full-resolution level (doubled at every lower level; the original's 64 at
            32x32).

    Raises:
        DataError: Maps smaller than 3x3.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], n_classes: int, width: int) -> None:
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if min(h, w) < 3:
            raise DataError(f"GNIME's U-Net needs maps of at least 3x3 pixels; got {h}x{w}.")
        self.size = (h, w)
        self.n_classes = int(n_classes)
        self.sizes = [(h, w)]
        while min(self.sizes[-1]) > 2:  # models.py:55: encode while the side is above 2
            ph, pw = self.sizes[-1]
            self.sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        depth = len(self.sizes) - 1
        widths = [width * 2**level for level in range(depth)]
        self.encoder = nn.ModuleList()
        c = in_channels
        for level in range(depth):
            self.encoder.append(nn.Conv2d(c, widths[level], 3, padding=1))
            c = widths[level]
        bh, bw = self.sizes[-1]
        self.features = nn.Linear(widths[-1] * bh * bw, DENSE_FEATURES)
        self.bottleneck_units = widths[-1]
        self.bottleneck = nn.Linear(DENSE_FEATURES + in_channels * h * w + self.n_classes, self.bottleneck_units)
        self.decoder = nn.ModuleList()
        c = self.bottleneck_units
        for level in range(depth - 1, -1, -1):
            c_out = out_channels if level == 0 else widths[level] // 2
            self.decoder.append(nn.Conv2d(c + widths[level], c_out, 3, padding=1))
            c = c_out

    def forward(self, maps: Tensor, predictions: Tensor) -> Tensor:
        """(n, C_in, H, W) maps and (n, K) prediction vectors -> (n, C_out, H, W) maps."""
        n = len(maps)
        skips: list[Tensor] = []
        h = maps
        for conv in self.encoder:
            h = F.relu(conv(h))
            skips.append(h)
            h = F.max_pool2d(h, 2, ceil_mode=True)  # ceil: (side + 1) // 2, as self.sizes
        z = F.relu(self.features(h.flatten(1)))
        z = torch.cat([z, maps.flatten(1), predictions], dim=1)
        z = F.relu(self.bottleneck(z)).view(n, self.bottleneck_units, 1, 1)
        h = F.interpolate(z, size=self.sizes[len(self.encoder) - 1], mode="nearest")
        for i, conv in enumerate(self.decoder):
            level = len(self.decoder) - 1 - i
            h = conv(torch.cat([h, skips[level]], dim=1))
            if level > 0:
                h = F.interpolate(F.relu(h), size=self.sizes[level - 1], mode="nearest")
        return h
