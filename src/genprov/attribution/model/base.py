"""Single-model attribution: "was this sample made by THIS generator?" in the open world.

The protocol follows FLIPAD (Laszkiewicz et al., ICML 2024, Sec. 3 and 5): the owner has only their own
generator and some samples of it (plus, optionally, samples known to come from elsewhere, e.g. real
images). An attributor

1. splits the owner's samples into a training part and a held-out part (``holdout_fraction``),
2. learns whatever the method needs from the training part and the negatives (:meth:`ModelAttributor._fit`),
3. scores the held-out own samples and sets ``threshold_`` so that at most a fraction ``fnr`` of them is
   rejected (a false-negative rate fixed from own samples only, paper Sec. 5, default 0.5%).

``score_samples`` is higher for samples more likely made by the generator; ``predict`` claims a sample
when its score is ``>= threshold_``.

Fitted attributors are artefacts (:mod:`genprov.models.artifact`): ``save_pretrained(folder)`` writes
``config.json`` (method, config, threshold, small state, the generator's checkpoint and fingerprint) and
``state.safetensors``; nothing is pickled. ``ModelAttributor.from_pretrained(folder)`` reopens the
generator from the recorded checkpoint; a generator passed as second argument overrides it (its weights'
fingerprint is checked).

Every model-attribution method, the thresholded :class:`ModelAttributor` and the keyed family
(:class:`~genprov.attribution.model.keyed.KeyedGenerators`, whose decision is a rule over its keys) alike,
satisfies :class:`AttributesSamples`: ``attribute(x)`` returns a :class:`~genprov.results.Result` of its
family (``ModelAttributionResult`` / ``KeyedAttributionResult``) and the fitted object is an artefact with
``save_pretrained(folder)`` / ``from_pretrained(folder)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from genprov.config import Config, is_int, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.metrics import threshold_at_fnr
from genprov.models.artifact import STATE_FILE, ArtifactPayload, ArtifactRecord, Pretrained
from genprov.registry import Registry
from genprov.results import ModelAttributionResult, Result
from genprov.utils.seeding import torch_generator
from genprov.utils.validation import check_images, check_matrix

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "MODEL_ATTRIBUTORS",
    "AttributesSamples",
    "Detector",
    "ModelAttributor",
    "ModelAttributorConfig",
]


@dataclass(frozen=True, kw_only=True)
class ModelAttributorConfig(Config):
    """Settings shared by every model attributor.

    Attributes:
        fnr: Target false-negative rate on held-out own samples; sets ``threshold_`` (paper: 0.5%).
        holdout_fraction: Fraction of the ``generated`` samples held out of training to set the threshold.
        seed: Seed of the hold-out split and of every random choice of the method.
        batch_size: Samples per forward pass / solver batch (does not change results).
    """

    fnr: float = 0.005
    holdout_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 256

    def validate(self) -> None:
        require(0.0 <= self.fnr < 1.0, "fnr", "a fraction in [0, 1)", self.fnr)
        require(0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "a fraction in (0, 1)", self.holdout_fraction)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)
        require(is_positive_int(self.batch_size), "batch_size", "a positive integer", self.batch_size)


@runtime_checkable
class AttributesSamples(Protocol):
    """The contract every model-attribution method satisfies (:class:`ModelAttributor`, ``KeyedGenerators``).

    ``attribute(x)`` takes (n, C, H, W) images in [-1, 1] (or (n, D) rows) and returns one
    :class:`~genprov.results.Result` per call (raising ``DataError`` on wrong shapes, ``NotFittedError``
    before fitting); ``save_pretrained(folder)`` writes the fitted object as an artefact, which the class's
    ``from_pretrained(folder)`` reopens without being passed what it studies.
    """

    def attribute(self, x: Tensor) -> Result:
        """Per-sample attribution of ``x``."""
        ...

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the fitted object as an artefact folder; returns it."""
        ...


class Detector(ABC):
    """An anomaly detector on feature tensors: learns "own" (normal) samples, optionally against negatives.

    Subclasses are registered in :data:`genprov.attribution.model.detectors.DETECTORS`.
    """

    @abstractmethod
    def fit(self, own: Tensor, negatives: Tensor | None = None, *, seed: int | None = None) -> Self:
        """Learn from features of own samples (label +1) and of known negatives (label -1).

        Args:
            own: (n_own, *feature_shape) features of the generator's samples.
            negatives: (n_neg, *feature_shape) features of samples from elsewhere, or ``None``.
            seed: Overrides the config's seed (the attributor derives it from its own seed).
        """

    @abstractmethod
    def score(self, features: Tensor) -> Tensor:
        """(n, *feature_shape) features -> (n,) scores; higher = more like the own samples."""

    @abstractmethod
    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Learned state as ``(JSON-able metadata, named tensors)``."""

    @abstractmethod
    def restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`state`."""


class ModelAttributor(Pretrained):
    """Base class of single-model attributors (FLIPAD and its baselines).

    Contract: ``fit`` learns from own samples (and optional negatives) and sets ``threshold_``;
    ``score_samples`` returns (n,) float32 scores, higher = more likely own; ``predict`` is
    ``score >= threshold_``; ``attribute`` always returns a :class:`~genprov.results.ModelAttributionResult`.
    Fitted attributors are artefacts: ``save_pretrained(folder)`` / ``from_pretrained(folder[, generator])``
    (:mod:`genprov.models.artifact`).

    Args:
        generator: The generator studied (``None`` for methods that only look at samples, e.g. raw pixels).
        config: The method's config (its :attr:`config_class`; default: defaults).

    Attributes:
        threshold_: Decision threshold set by :meth:`fit`; ``predict`` claims ``score >= threshold_``.
        input_shape_: Per-sample shape the attributor was fitted on, e.g. ``(1, 16, 16)`` or ``(13,)``.
        holdout_scores_: (n_holdout,) scores of the held-out own samples that set the threshold.
    """

    name: ClassVar[str] = ""
    artifact_kind: ClassVar[str] = "model-attributor"
    config_class: ClassVar[type[ModelAttributorConfig]] = ModelAttributorConfig
    #: whether the method needs the generator (its fingerprint is checked on load)
    needs_generator: ClassVar[bool] = False

    threshold_: float
    input_shape_: tuple[int, ...]
    holdout_scores_: Tensor

    def __init__(self, generator: nn.Module | None, config: ModelAttributorConfig | None = None) -> None:
        if config is not None and not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}; got {type(config).__name__}."
            )
        self.generator = generator
        self.config = config if config is not None else self.config_class()

    # ------------------------------------------------------------------------------------- subclass hooks

    @abstractmethod
    def _fit(self, own: Tensor, negatives: Tensor | None) -> None:
        """Learn the method's state from own training samples and optional negatives (already checked)."""

    @abstractmethod
    def _score(self, x: Tensor) -> Tensor:
        """(n, *input_shape_) checked samples -> (n,) float scores, higher = more likely own."""

    def _state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Learned state besides the threshold, as ``(JSON-able metadata, named tensors)``."""
        return {}, {}

    def _restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`_state` (``input_shape_`` and ``threshold_`` are already set)."""
        return None

    def _value_range(self) -> tuple[float, float] | None:
        """Value range required of images (``None``: no range check)."""
        return (-1.0, 1.0)

    def _check_input(self, x: object, name: str) -> Tensor:
        """Check a batch: images (n, C, H, W) in the value range, or rows (n, D); finite floats."""
        if isinstance(x, Tensor) and x.ndim == 2:
            out = check_matrix(x, name)
            if not out.is_floating_point():
                raise DataError(f"{name} must be a float tensor; got dtype {out.dtype}.")
        else:
            out = check_images(x, name, value_range=self._value_range())
        return out.detach().to(torch.float32)

    # ----------------------------------------------------------------------------------------- public API

    def fit(self, generated: Tensor, *, negatives: Tensor | None = None) -> Self:
        """Learn the generator's samples and set ``threshold_`` at the configured false-negative rate.

        Args:
            generated: (n, C, H, W) images in [-1, 1] (or (n, D) tabular rows) made by the generator;
                a fraction ``holdout_fraction`` is held out to set the threshold.
            negatives: Samples known to come from elsewhere (real data, other generators), same shape
                per sample, or ``None``.

        Returns:
            ``self``.

        Raises:
            DataError: Wrong shape, range, dtype, NaN values, too few samples, or negatives whose shape
                differs from the generated samples.
        """
        train, hold, neg = self._split(generated, negatives)
        return self._fit_checked(train, hold, neg)

    def fit_split(self, train: Tensor, holdout: Tensor, *, negatives: Tensor | None = None) -> Self:
        """Like :meth:`fit`, with the held-out own samples given explicitly (e.g. fixed data resamples).

        Args:
            train: (n_train, ...) own samples to learn from (at least 2).
            holdout: (n_hold, ...) own samples that set the threshold (at least 1).
            negatives: Samples from elsewhere, or ``None``.

        Returns:
            ``self``.
        """
        own = self._check_input(train, "train")
        hold = self._check_input(holdout, "holdout")
        neg = self._check_input(negatives, "negatives") if negatives is not None else None
        for name, other in (("holdout", hold), ("negatives", neg)):
            if other is not None and other.shape[1:] != own.shape[1:]:
                raise DataError(
                    f"{name} must have the per-sample shape of train {tuple(own.shape[1:])}; got {tuple(other.shape[1:])}."
                )
        if len(own) < 2 or len(hold) < 1:
            raise DataError(f"fit_split needs at least 2 train and 1 held-out samples; got {len(own)} and {len(hold)}.")
        return self._fit_checked(own, hold, neg if neg is not None and len(neg) else None)

    def _fit_checked(self, train: Tensor, hold: Tensor, neg: Tensor | None) -> Self:
        for attr in ("threshold_", "holdout_scores_"):
            self.__dict__.pop(attr, None)
        self.input_shape_ = tuple(int(s) for s in train.shape[1:])
        self._fit(train, neg)
        self._set_threshold(self._score_batched(hold))
        return self

    def _split(self, generated: Tensor, negatives: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Check the inputs and split the own samples into (train, held-out); returns (train, held-out, negatives)."""
        own = self._check_input(generated, "generated")
        neg = None
        if negatives is not None:
            neg = self._check_input(negatives, "negatives")
            if neg.shape[1:] != own.shape[1:]:
                raise DataError(
                    f"negatives must have the per-sample shape of generated {tuple(own.shape[1:])}; "
                    f"got {tuple(neg.shape[1:])}."
                )
            if len(neg) == 0:
                neg = None
        n = len(own)
        n_hold = max(1, round(self.config.holdout_fraction * n))
        if n - n_hold < 2:
            raise DataError(
                f"generated holds {n} samples; fitting needs at least 2 for training plus "
                f"{n_hold} held out for the threshold (holdout_fraction={self.config.holdout_fraction}). "
                "Pass more generated samples."
            )
        order = torch.randperm(n, generator=torch_generator(self.config.seed, "holdout", n))
        return own[order[n_hold:]], own[order[:n_hold]], neg

    def _set_threshold(self, holdout_scores: Tensor) -> None:
        """Record the held-out own scores and set ``threshold_`` at ``config.fnr``."""
        self.holdout_scores_ = holdout_scores.detach().to(torch.float32)
        self.threshold_ = threshold_at_fnr(self.holdout_scores_, self.config.fnr)

    def score_samples(self, x: Tensor) -> Tensor:
        """Attribution scores.

        Args:
            x: (n, *input_shape_) samples (images in [-1, 1] or tabular rows).

        Returns:
            (n,) float32 scores; higher = more likely made by this generator.

        Raises:
            NotFittedError: Before :meth:`fit`.
            DataError: Wrong shape, range, dtype or NaN values.
        """
        self._check_fitted()
        checked = self._check_input(x, "x")
        if tuple(checked.shape[1:]) != self.input_shape_:
            raise DataError(
                f"x must have per-sample shape {self.input_shape_} (what the attributor was fitted on); "
                f"got {tuple(checked.shape[1:])}. Resize the inputs to the generator's output size."
            )
        return self._score_batched(checked)

    def predict(self, x: Tensor) -> Tensor:
        """(n,) bool: ``True`` where the sample is attributed to the generator (``score >= threshold_``)."""
        return self.score_samples(x) >= self.threshold_

    def attribute(self, x: Tensor) -> ModelAttributionResult:
        """Scores and verdicts as a :class:`~genprov.results.ModelAttributionResult`."""
        scores = self.score_samples(x).numpy().astype(np.float64)
        return ModelAttributionResult(
            method=self.name,
            config=self.config.to_dict(),
            scores=scores,
            verdicts=scores >= self.threshold_,
            threshold=float(self.threshold_),
        )

    def _score_batched(self, x: Tensor) -> Tensor:
        if len(x) == 0:
            return torch.empty(0)
        bs = self.config.batch_size
        with torch.no_grad():
            parts = [self._score(x[i : i + bs]) for i in range(0, len(x), bs)]
        return torch.cat(parts).to(torch.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call .fit(generated, negatives=...) first "
                "(or reopen a fitted one with ModelAttributor.from_pretrained(folder))."
            )

    # ---------------------------------------------------------------------------------------- save / load

    def _payload(self) -> ArtifactPayload:
        self._check_fitted()
        meta, tensors = self._state()
        clash = [k for k in tensors if k.startswith("attributor.")]
        if clash:
            raise ConfigError(f"state tensor names must not start with 'attributor.'; got {clash}.")
        return ArtifactPayload(
            config=self.config,
            state={"threshold": float(self.threshold_), "input_shape": list(self.input_shape_), "method": meta},
            tensors={**tensors, "attributor.holdout_scores": self.holdout_scores_},
            wraps={"generator": self.generator if self.needs_generator else None},
        )

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            factory = MODEL_ATTRIBUTORS.entry(record.method).factory
        except ConfigError as err:
            raise CheckpointError(f"{record.folder}: {err}") from err
        if not (isinstance(factory, type) and issubclass(factory, cls)):
            raise CheckpointError(
                f"{record.folder} holds a {record.method!r} attributor, which is not a {cls.__name__}."
            )
        generator = record.wrapped("generator", wrapped) if factory.needs_generator else wrapped
        if factory.needs_generator and generator is None:
            raise CheckpointError(
                f"The {record.method!r} attributor at {record.folder} needs the generator it was fitted for; "
                "pass it as from_pretrained(folder, generator)."
            )
        obj = factory(generator, factory.config_class.from_dict(record.config))
        obj.input_shape_ = tuple(int(s) for s in record.state["input_shape"])
        obj.holdout_scores_ = tensors.pop("attributor.holdout_scores")
        obj._restore(dict(record.state.get("method") or {}), tensors)
        obj.threshold_ = float(record.state["threshold"])
        return obj


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``genprov-model-attributor-v1`` config.json in the artefact layout."""
    fingerprint = raw.get("generator_fingerprint")
    return {
        **raw,
        "kind": ModelAttributor.artifact_kind,
        "wraps": {"generator": {"fingerprint": fingerprint}} if fingerprint else {},
        "state": {"threshold": raw.get("threshold"), "input_shape": raw.get("input_shape"), "method": raw.get("state")},
        "tensors": STATE_FILE,
    }


ModelAttributor.legacy_formats = {"genprov-model-attributor-v1": _upgrade_v1}


#: Every single-model attributor, by kebab-case name: ``MODEL_ATTRIBUTORS.create("flipad", generator)``.
MODEL_ATTRIBUTORS: Registry[ModelAttributor] = Registry("model attributor")
