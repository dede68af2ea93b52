"""Anomaly detectors on attribution features: Deep SAD and the detector registry.

Deep SAD (Ruff et al., ICLR 2020, "Deep semi-supervised anomaly detection", Sec. 3) maps a feature
tensor through a network ``phi`` to a small representation and measures ``d(x) = ||phi(x) - c||^2`` to a
fixed centre ``c``. Training minimises the mean over samples of ``eta * (d + 1e-6) ** label`` with label
``+1`` for the generator's own samples (pulled towards ``c``) and ``-1`` for known other sources (pushed
away). FLIPAD (Laszkiewicz et al., ICML 2024, Sec. 4) uses it as the detector on top of the recovered
activations and on the baselines' features; the score is ``-d`` (higher = more likely own).

As in Deep SAD, ``phi`` has no bias terms and its BatchNorm layers no affine parameters, so that the
trivial solution "map everything to c" is not available; ``c`` is the mean representation of the
training data at initialisation, with entries closer to 0 than ``eps = 0.1`` moved to ``±0.1``.
Two network shapes: a LeNet-style CNN for (C, H, W) feature maps and an MLP for (D,) feature vectors.

Training: Adam with (L2) weight decay and a step learning-rate schedule (``lr_milestones``, ``lr_gamma``);
weights are initialised from a seed inside :func:`torch.random.fork_rng` and batches are drawn from local
generators, so the global RNG is never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from genprov.attribution.model.base import Detector
from genprov.config import Config, is_positive_int, require
from genprov.exceptions import DataError, NotFittedError
from genprov.registry import Registry
from genprov.utils.seeding import derive_seed, torch_generator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DETECTORS", "DeepSAD", "DeepSADConfig", "DeepSADNet"]

#: Every detector, by kebab-case name: ``DETECTORS.create("deep-sad", config=DeepSADConfig(...))``.
DETECTORS: Registry[Detector] = Registry("detector")

_EPS_DIST = 1e-6
_EPS_CENTER = 0.1
_BN_EPS = 1e-4


@dataclass(frozen=True, kw_only=True)
class DeepSADConfig(Config):
    """Deep SAD network and training settings.

    Attributes:
        widths: Conv channels (feature maps) or hidden widths (vectors) of ``phi``, one per block.
        rep_dim: Dimension of the representation ``phi(x)``.
        kernel_size: Convolution kernel size (odd; 'same' padding).
        n_epochs: Training epochs.
        lr: Adam learning rate (paper: 5e-4).
        weight_decay: Adam L2 weight decay (Deep SAD: 5e-7).
        lr_milestones: Epochs after which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: Learning-rate decay factor of the step schedule.
        batch_size: Training batch size.
        eta: Weight of the loss terms (``eta * (d + 1e-6) ** label``).
        seed: Seed of the initial weights and the batch order.
    """

    widths: tuple[int, ...] = (32, 64)
    rep_dim: int = 32
    kernel_size: int = 3
    n_epochs: int = 30
    lr: float = 5e-4
    weight_decay: float = 5e-7
    lr_milestones: tuple[int, ...] = (20,)
    lr_gamma: float = 0.1
    batch_size: int = 128
    eta: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        require(
            isinstance(self.widths, tuple) and len(self.widths) >= 1 and all(is_positive_int(w) for w in self.widths),
            "widths",
            "a non-empty tuple of positive integers, e.g. (32, 64)",
            self.widths,
        )
        require(is_positive_int(self.rep_dim), "rep_dim", "a positive integer", self.rep_dim)
        require(
            is_positive_int(self.kernel_size) and self.kernel_size % 2 == 1,
            "kernel_size",
            "an odd integer",
            self.kernel_size,
        )
        require(is_positive_int(self.n_epochs), "n_epochs", "a positive integer", self.n_epochs)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(self.weight_decay >= 0, "weight_decay", "a non-negative number", self.weight_decay)
        require(
            isinstance(self.lr_milestones, tuple) and all(is_positive_int(m) for m in self.lr_milestones),
            "lr_milestones",
            "a tuple of positive epoch numbers",
            self.lr_milestones,
        )
        require(0 < self.lr_gamma <= 1, "lr_gamma", "a number in (0, 1]", self.lr_gamma)
        require(
            is_positive_int(self.batch_size) and self.batch_size >= 2, "batch_size", "an integer >= 2", self.batch_size
        )
        require(self.eta > 0, "eta", "a positive number", self.eta)
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", "a non-negative integer", self.seed)


class DeepSADNet(nn.Module):
    """Bias-free ``phi``: conv (or linear) -> BatchNorm(affine=False) -> leaky ReLU blocks -> linear.

    Args:
        input_shape: ``(C, H, W)`` for feature maps (LeNet-style CNN, 2x2 max-pooling while the maps are
            at least 4 pixels wide) or ``(D,)`` for vectors (MLP).
        config: Widths, representation size and kernel size.
    """

    def __init__(self, input_shape: tuple[int, ...], config: DeepSADConfig) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        layers: list[nn.Module] = []
        if len(self.input_shape) == 3:
            c, h, w = self.input_shape
            for width in config.widths:
                layers += [
                    nn.Conv2d(c, width, config.kernel_size, padding=config.kernel_size // 2, bias=False),
                    nn.BatchNorm2d(width, eps=_BN_EPS, affine=False),
                    nn.LeakyReLU(0.01),
                ]
                if min(h, w) >= 4:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                c = width
            n_flat = c * h * w
        elif len(self.input_shape) == 1:
            d = self.input_shape[0]
            for width in config.widths:
                layers += [
                    nn.Linear(d, width, bias=False),
                    nn.BatchNorm1d(width, eps=_BN_EPS, affine=False),
                    nn.LeakyReLU(0.01),
                ]
                d = width
            n_flat = d
        else:
            raise DataError(
                f"Deep SAD takes (C, H, W) feature maps or (D,) vectors; got per-sample shape {self.input_shape}."
            )
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(n_flat, config.rep_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(n, *input_shape) -> (n, rep_dim) representations."""
        out: Tensor = self.head(self.body(x).flatten(1))
        return out


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    """Index batches over ``range(n)`` (shuffled with ``generator``), none smaller than 2 (BatchNorm)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    parts = list(order.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < 2:
        parts[-2] = torch.cat([parts[-2], parts.pop()])
    return parts


@DETECTORS.register("deep-sad", config=DeepSADConfig)
class DeepSAD(Detector):
    """Deep SAD detector (Ruff et al., 2020); ``score = -||phi(x) - c||^2``.

    Args:
        config: Network and training settings.

    Attributes:
        net_: The trained network (eval mode).
        center_: (rep_dim,) the centre ``c``.
        losses_: Mean training loss per epoch.
    """

    def __init__(self, config: DeepSADConfig | None = None) -> None:
        self.config = config if config is not None else DeepSADConfig()

    def fit(self, own: Tensor, negatives: Tensor | None = None, *, seed: int | None = None) -> Self:
        """Train ``phi`` on own features (label +1) and negatives (label -1).

        Args:
            own: (n_own, *shape) features, n_own >= 2.
            negatives: (n_neg, *shape) features or ``None`` (then it is one-class Deep SVDD).
            seed: Seed (default ``config.seed``).

        Returns:
            ``self``.
        """
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        if own.ndim < 2 or len(own) < 2:
            raise DataError(f"Deep SAD needs at least 2 own feature vectors; got shape {tuple(own.shape)}.")
        x = own.detach().to(torch.float32)
        labels = torch.ones(len(own))
        if negatives is not None and len(negatives):
            if negatives.shape[1:] != own.shape[1:]:
                raise DataError(
                    f"negative features have shape {tuple(negatives.shape[1:])}, own {tuple(own.shape[1:])}."
                )
            x = torch.cat([x, negatives.detach().to(torch.float32)])
            labels = torch.cat([labels, -torch.ones(len(negatives))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "deep-sad-init"))
            net = DeepSADNet(tuple(x.shape[1:]), cfg)
        self.center_ = self._init_center(net, x)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma
        )
        net.train()
        self.losses_: list[float] = []
        for epoch in range(cfg.n_epochs):
            total, count = 0.0, 0
            for idx in _batches(len(x), cfg.batch_size, torch_generator(seed, "deep-sad-epoch", epoch)):
                dist = (net(x[idx]) - self.center_).pow(2).sum(1)
                loss = (cfg.eta * (dist + _EPS_DIST).pow(labels[idx])).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            scheduler.step()
            self.losses_.append(total / count)
        if not all(math.isfinite(v) for v in self.losses_):
            raise DataError(
                "Deep SAD training diverged (non-finite loss); the features may contain huge values. "
                "Standardise the features or lower the learning rate."
            )
        self.net_ = net.eval()
        return self

    @staticmethod
    def _init_center(net: DeepSADNet, x: Tensor) -> Tensor:
        """Mean of ``phi`` over the training data with batch statistics (running stats then reset)."""
        net.train()
        total = torch.zeros(net.head.out_features)
        with torch.no_grad():
            for idx in _batches(len(x), 512, None):
                total += net(x[idx]).sum(0)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        center = total / len(x)
        small = center.abs() < _EPS_CENTER
        center[small & (center < 0)] = -_EPS_CENTER
        center[small & (center >= 0)] = _EPS_CENTER
        return center

    def distances(self, features: Tensor) -> Tensor:
        """(n, *shape) -> (n,) squared distances ``||phi(x) - c||^2`` (lower = more like own)."""
        if not hasattr(self, "net_"):
            raise NotFittedError("This DeepSAD detector is not fitted yet; call .fit(own, negatives) first.")
        if tuple(features.shape[1:]) != self.net_.input_shape:
            raise DataError(
                f"features must have per-sample shape {self.net_.input_shape}; got {tuple(features.shape[1:])}."
            )
        with torch.no_grad():
            return (self.net_(features.to(torch.float32)) - self.center_).pow(2).sum(1)

    def score(self, features: Tensor) -> Tensor:
        """(n, *shape) -> (n,) scores ``-d``; higher = more like the own samples."""
        return -self.distances(features)

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``({"input_shape": [...]}, {"center": c, "net.<key>": ...})``."""
        if not hasattr(self, "net_"):
            raise NotFittedError("This DeepSAD detector is not fitted yet; nothing to save.")
        tensors = {f"net.{k}": v for k, v in self.net_.state_dict().items()}
        tensors["center"] = self.center_
        return {"input_shape": list(self.net_.input_shape)}, tensors

    def restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Rebuild the network from ``meta["input_shape"]`` and load the tensors."""
        net = DeepSADNet(tuple(int(s) for s in meta["input_shape"]), self.config)
        net.load_state_dict({k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        self.net_ = net.eval()
        self.center_ = tensors["center"]
