"""Feature-based attributors: features -> pooling -> standardisation -> channel selection -> detector.

FLIPAD and its pixel/DCT baselines (Laszkiewicz et al., ICML 2024, Sec. 4-5) share everything but the
feature map: the features of the owner's samples (label +1) and of known other sources (label -1) are
pooled to at most ``pool_to`` x ``pool_to``, standardised with the owner-sample statistics
``(f - mean) / (sd + std_eps)`` (``std_eps = 0.05`` as in the paper's code), optionally reduced to the
``n_channels`` channels whose mean differs most between own and negative samples, and fed to a Deep SAD
detector whose score ``-||phi(f) - c||^2`` is thresholded at the configured false-negative rate on held-out
own samples.

The work is split so that expensive features (lasso inversions) can be computed once and reused:
:meth:`FeatureAttributor.prepare` sets up the feature map, :meth:`FeatureAttributor.features` computes it,
:meth:`FeatureAttributor.fit_features` trains the detector and sets the threshold from feature tensors;
:meth:`~genprov.attribution.model.base.ModelAttributor.fit` chains the three.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genprov.attribution.model.base import ModelAttributor, ModelAttributorConfig
from genprov.attribution.model.detectors import DETECTORS, DeepSAD, DeepSADConfig
from genprov.config import is_positive_int, require
from genprov.exceptions import DataError, NotFittedError
from genprov.utils.seeding import derive_seed

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FeatureAttributor", "FeatureAttributorConfig", "reduce_spatial"]


@dataclass(frozen=True, kw_only=True)
class FeatureAttributorConfig(ModelAttributorConfig):
    """Settings of the feature -> Deep SAD pipeline (shared by FLIPAD and the pixel/DCT baselines).

    Attributes:
        standardize: Standardise features with the own-sample mean and standard deviation.
        std_eps: Added to the standard deviation, ``(f - mean) / (sd + std_eps)`` (paper code: 0.05).
        pool_to: Reduce feature maps larger than ``pool_to`` x ``pool_to`` (``None``: never).
        n_channels: Keep only the ``n_channels`` channels (or vector entries) whose own and negative
            means differ most (``None``: keep all; needs negatives).
        detector: Deep SAD settings.
    """

    standardize: bool = True
    std_eps: float = 0.05
    pool_to: int | None = 32
    n_channels: int | None = None
    detector: DeepSADConfig = field(default_factory=DeepSADConfig)

    def validate(self) -> None:
        super().validate()
        require(self.std_eps >= 0, "std_eps", "a non-negative number", self.std_eps)
        if self.pool_to is not None:
            require(is_positive_int(self.pool_to), "pool_to", "a positive integer or None", self.pool_to)
        if self.n_channels is not None:
            require(is_positive_int(self.n_channels), "n_channels", "a positive integer or None", self.n_channels)
        require(isinstance(self.detector, DeepSADConfig), "detector", "a DeepSADConfig", self.detector)


def reduce_spatial(features: Tensor, size: int | None, mode: str) -> Tensor:
    """Shrink (n, C, H, W) feature maps to at most ``size`` x ``size``; vectors pass through.

    Args:
        features: (n, C, H, W) maps or (n, D) vectors.
        size: Largest allowed side (``None``: no change).
        mode: ``"max"`` (max-pooling with kernel ``ceil(H / size)``, FLIPAD's choice), ``"area"``
            (area-average resize, the raw-pixel baseline) or ``"crop"`` (centre crop, the DCT baseline).

    Returns:
        The reduced tensor.
    """
    if features.ndim != 4 or size is None or max(features.shape[-2:]) <= size:
        return features
    if mode == "max":
        kernel = math.ceil(max(features.shape[-2:]) / size)
        return F.max_pool2d(features, kernel_size=kernel, stride=kernel, ceil_mode=True)
    if mode == "area":
        return F.interpolate(features, size=(min(size, features.shape[-2]), min(size, features.shape[-1])), mode="area")
    if mode == "crop":
        h, w = features.shape[-2:]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        return features[..., top : top + min(size, h), left : left + min(size, w)]
    raise DataError(f"Unknown reduction mode {mode!r}; use 'max', 'area' or 'crop'.")


class FeatureAttributor(ModelAttributor):
    """A :class:`ModelAttributor` that scores samples with Deep SAD on a feature map of them.

    Subclasses implement :meth:`_features` (and, if the map needs set-up, :meth:`_prepare`).

    Attributes:
        mean_: Own-sample feature mean (``None`` without standardisation).
        scale_: ``sd + std_eps`` of the own-sample features (``None`` without standardisation).
        channels_: Indices of the kept channels / entries (``None``: all).
        detector_: The trained :class:`~genprov.attribution.model.detectors.DeepSAD`.
    """

    config_class: ClassVar[type[ModelAttributorConfig]] = FeatureAttributorConfig
    config: FeatureAttributorConfig
    #: how feature maps above ``pool_to`` are reduced (see :func:`reduce_spatial`)
    pool_mode: ClassVar[str] = "max"

    mean_: Tensor | None
    scale_: Tensor | None
    channels_: Tensor | None
    detector_: DeepSAD

    # ---------------------------------------------------------------------------------- subclass hooks

    def _prepare(self, own: Tensor, negatives: Tensor | None) -> None:
        """Set up the feature map from own training samples (default: nothing to set up)."""

    def _prepared(self) -> bool:
        """Whether :meth:`_features` can run (default: always)."""
        return True

    @abstractmethod
    def _features(self, x: Tensor) -> Tensor:
        """(n, *input_shape_) checked samples -> (n, C, H, W) or (n, D) raw features (one batch)."""

    # ---------------------------------------------------------------------------------------- public API

    def prepare(self, own: Tensor, negatives: Tensor | None = None) -> Self:
        """Set up the feature map (e.g. FLIPAD's anchor and operator) from own training samples.

        Args:
            own: (n, C, H, W) images in [-1, 1] or (n, D) rows made by the generator.
            negatives: Optional samples from elsewhere (unused by the built-in feature maps).

        Returns:
            ``self``.
        """
        checked = self._check_input(own, "generated")
        neg = self._check_input(negatives, "negatives") if negatives is not None else None
        self.input_shape_ = tuple(int(s) for s in checked.shape[1:])
        self._prepare(checked, neg)
        return self

    def features(self, x: Tensor) -> Tensor:
        """Pooled (not yet standardised) features of samples, computed in batches of ``batch_size``.

        Args:
            x: (n, *input_shape_) samples.

        Returns:
            (n, C, H', W') feature maps or (n, D) vectors.

        Raises:
            NotFittedError: Before :meth:`prepare` (or :meth:`fit`).
        """
        if not hasattr(self, "input_shape_") or not self._prepared():
            raise NotFittedError(
                f"This {type(self).__name__} has no feature map yet; call .fit(generated, ...) or .prepare(generated)."
            )
        checked = self._check_input(x, "x")
        if tuple(checked.shape[1:]) != self.input_shape_:
            raise DataError(
                f"x must have per-sample shape {self.input_shape_} (the generator's output); got "
                f"{tuple(checked.shape[1:])}."
            )
        bs = self.config.batch_size
        with torch.no_grad():
            parts = [
                reduce_spatial(self._features(checked[i : i + bs]), self.config.pool_to, self.pool_mode)
                for i in range(0, len(checked), bs)
            ]
        if not parts:
            raise DataError("x is empty; pass at least one sample.")
        return torch.cat(parts)

    def fit_features(self, own: Tensor, holdout: Tensor, negatives: Tensor | None = None) -> Self:
        """Train the detector on features and set ``threshold_`` from held-out own features.

        Use it to reuse expensive features across several fits (e.g. data resamples); :meth:`fit` does
        the same from samples.

        Args:
            own: (n_own, ...) features of own training samples (from :meth:`features`).
            holdout: (n_hold, ...) features of held-out own samples (threshold at ``fnr``).
            negatives: (n_neg, ...) features of samples from elsewhere, or ``None``.

        Returns:
            ``self``.
        """
        for attr in ("threshold_", "holdout_scores_"):
            self.__dict__.pop(attr, None)
        if len(holdout) < 1:
            raise DataError("fit_features needs at least 1 held-out own feature vector to set the threshold.")
        self._fit_detector(own, negatives)
        self._set_threshold(self.score_features(holdout))
        return self

    def _fit_detector(self, own: Tensor, negatives: Tensor | None) -> None:
        """Standardise, select channels and train Deep SAD on (pooled) features."""
        cfg = self.config
        if len(own) < 2:
            raise DataError(f"Fitting needs at least 2 own feature vectors; got {len(own)}.")
        if cfg.standardize:
            self.mean_ = own.mean(0)
            self.scale_ = own.std(0) + cfg.std_eps
            if bool((self.scale_ == 0).any()):
                raise DataError("Some features are constant over the own samples; set std_eps > 0 to standardise.")
        else:
            self.mean_ = self.scale_ = None
        self.channels_ = None
        own_n = self._standardize(own)
        neg_n = self._standardize(negatives) if negatives is not None and len(negatives) else None
        if cfg.n_channels is not None and neg_n is not None and cfg.n_channels < own_n.shape[1]:
            gap = (own_n.mean(0) - neg_n.mean(0)).abs()
            per_channel = gap.flatten(1).mean(1) if gap.ndim > 1 else gap
            self.channels_ = torch.sort(torch.topk(per_channel, cfg.n_channels).indices).values
            own_n, neg_n = own_n[:, self.channels_], neg_n[:, self.channels_]
        detector = DETECTORS.create("deep-sad", config=cfg.detector)
        if not isinstance(detector, DeepSAD):  # pragma: no cover - registry invariant
            raise TypeError("the 'deep-sad' detector must be a DeepSAD")
        self.detector_ = detector.fit(own_n, neg_n, seed=derive_seed(cfg.seed, "detector", cfg.detector.seed))

    def score_features(self, features: Tensor) -> Tensor:
        """(n, ...) features from :meth:`features` -> (n,) scores, higher = more likely own."""
        if not hasattr(self, "detector_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call .fit(...) first.")
        f = self._standardize(features)
        if self.channels_ is not None:
            f = f[:, self.channels_]
        return self.detector_.score(f).to(torch.float32)

    # ------------------------------------------------------------------------------------------- internals

    def _standardize(self, features: Tensor) -> Tensor:
        f = features.to(torch.float32)
        if self.mean_ is None or self.scale_ is None:
            return f
        if tuple(f.shape[1:]) != tuple(self.mean_.shape):
            raise DataError(f"features must have per-sample shape {tuple(self.mean_.shape)}; got {tuple(f.shape[1:])}.")
        return (f - self.mean_) / self.scale_

    def _fit(self, own: Tensor, negatives: Tensor | None) -> None:
        self._prepare(own, negatives)
        f_neg = self.features(negatives) if negatives is not None else None
        self._fit_detector(self.features(own), f_neg)

    def _score(self, x: Tensor) -> Tensor:
        return self.score_features(reduce_spatial(self._features(x), self.config.pool_to, self.pool_mode))

    def _state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        det_meta, det_tensors = self.detector_.state()
        tensors = {f"detector.{k}": v for k, v in det_tensors.items()}
        for name in ("mean_", "scale_", "channels_"):
            value = getattr(self, name)
            if value is not None:
                tensors[name.rstrip("_")] = value
        meta, extra = self._feature_state()
        tensors.update(extra)
        return {"detector": det_meta, "features": meta}, tensors

    def _restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.mean_ = tensors.get("mean")
        self.scale_ = tensors.get("scale")
        self.channels_ = tensors.get("channels")
        detector = DeepSAD(self.config.detector)
        detector.restore(
            meta["detector"], {k[len("detector.") :]: v for k, v in tensors.items() if k.startswith("detector.")}
        )
        self.detector_ = detector
        self._restore_features(dict(meta.get("features") or {}), tensors)

    def _feature_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """State of the feature map (e.g. FLIPAD's anchor); tensor names must not clash with the above."""
        return {}, {}

    def _restore_features(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`_feature_state`."""
