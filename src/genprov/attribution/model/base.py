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

Fitted attributors are saved as a folder with ``config.json`` (method, config, threshold, small state)
and ``state.safetensors`` (tensors); nothing is pickled. The generator itself is not saved: pass it to
:meth:`ModelAttributor.load` again (a fingerprint of its weights is checked).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from genprov.config import Config, is_int, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.models.checkpoints import load_tensors, save_tensors
from genprov.registry import Registry
from genprov.results import ModelAttributionResult
from genprov.utils.artifacts import check_output_folder, refuse_pickle
from genprov.utils.io import atomic_write_json, read_json
from genprov.utils.seeding import torch_generator
from genprov.utils.validation import check_images, check_matrix

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CONFIG_FILE",
    "MODEL_ATTRIBUTORS",
    "STATE_FILE",
    "Detector",
    "ModelAttributor",
    "ModelAttributorConfig",
    "generator_fingerprint",
    "threshold_at_fnr",
]

CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
_FORMAT = "genprov-model-attributor-v1"


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


def threshold_at_fnr(own_scores: Tensor, fnr: float) -> float:
    """The largest threshold that rejects at most ``floor(fnr * n)`` of the ``n`` own scores.

    Same rule as :func:`genprov.eval.threshold_at_fnr` (which this layer may not import): a sample is
    claimed when ``score >= threshold``.

    Args:
        own_scores: (n,) scores of held-out own samples.
        fnr: Allowed false-negative rate in [0, 1).

    Returns:
        One of the own scores.
    """
    own = torch.sort(own_scores.detach().to(torch.float64).flatten()).values
    if own.numel() == 0:
        raise DataError("Cannot set a threshold from zero held-out own samples; pass more generated samples.")
    allowed = math.floor(fnr * own.numel() + 1e-9)
    return float(own[min(allowed, own.numel() - 1)])


def generator_fingerprint(generator: nn.Module | None) -> str | None:
    """Hex digest of a module's parameters and buffers (names, shapes, values), or ``None`` for no module."""
    if generator is None:
        return None
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(generator.state_dict().items()):
        arr = np.ascontiguousarray(tensor.detach().to("cpu").to(torch.float32).numpy())
        h.update(f"{name}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


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


class ModelAttributor(ABC):
    """Base class of single-model attributors (FLIPAD and its baselines).

    Args:
        generator: The generator studied (``None`` for methods that only look at samples, e.g. raw pixels).
        config: The method's config (its :attr:`config_class`; default: defaults).

    Attributes:
        threshold_: Decision threshold set by :meth:`fit`; ``predict`` claims ``score >= threshold_``.
        input_shape_: Per-sample shape the attributor was fitted on, e.g. ``(1, 16, 16)`` or ``(13,)``.
        holdout_scores_: (n_holdout,) scores of the held-out own samples that set the threshold.
    """

    name: ClassVar[str] = ""
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
                "(or load a fitted one with ModelAttributor.load)."
            )

    # ---------------------------------------------------------------------------------------- save / load

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``state.safetensors`` into ``folder`` (created), each atomically.

        Returns:
            The folder.

        Raises:
            ConfigError: ``folder`` is a file or holds another artefact than a detector of this method.
        """
        self._check_fitted()
        meta, tensors = self._state()
        clash = [k for k in tensors if k.startswith("attributor.")]
        if clash:
            raise ConfigError(f"state tensor names must not start with 'attributor.'; got {clash}.")
        folder = Path(folder)
        check_output_folder(folder, accept={f"{self.name} detector"})
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / STATE_FILE, {**tensors, "attributor.holdout_scores": self.holdout_scores_})
        atomic_write_json(
            folder / CONFIG_FILE,
            {
                "format": _FORMAT,
                "method": self.name,
                "class": type(self).__name__,
                "config": self.config.to_dict(),
                "threshold": float(self.threshold_),
                "input_shape": list(self.input_shape_),
                "generator_fingerprint": generator_fingerprint(self.generator) if self.needs_generator else None,
                "state": meta,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, generator: nn.Module | None = None) -> ModelAttributor:
        """Read an attributor written by :meth:`save`.

        Args:
            folder: The folder.
            generator: The generator it was fitted for (required by methods that use it, e.g. FLIPAD).

        Returns:
            The fitted attributor, of the class that was saved.

        Raises:
            CheckpointError: Missing or unreadable files, an unknown method, a different class than asked
                for, or a generator whose weights differ from the one it was fitted for.
        """
        folder = Path(folder)
        refuse_pickle(folder, "a detector folder")
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(
                f"No fitted attributor at {folder}: {path} is missing. Fit one and save it with .save(folder)."
            )
        try:
            meta = read_json(path)
        except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
            raise CheckpointError(f"Cannot read {path}: {err}. Re-create it by fitting again.") from err
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"{path} is not a genprov model-attributor config (format {_FORMAT!r}).")
        try:
            factory = MODEL_ATTRIBUTORS.entry(str(meta["method"])).factory
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from err
        if not (isinstance(factory, type) and issubclass(factory, cls)):
            raise CheckpointError(f"{path} holds a {meta['method']!r} attributor, which is not a {cls.__name__}.")
        if factory.needs_generator:
            if generator is None:
                raise CheckpointError(
                    f"The {meta['method']!r} attributor at {folder} needs the generator it was fitted for; "
                    "pass it as ModelAttributor.load(folder, generator)."
                )
            if meta.get("generator_fingerprint") != generator_fingerprint(generator):
                raise CheckpointError(
                    f"The generator passed to load differs from the one the attributor at {folder} was fitted "
                    "for (its weights have another fingerprint). Pass the same generator, or fit again."
                )
        config = factory.config_class.from_dict(meta["config"])
        obj: ModelAttributor = factory(generator, config)
        tensors = load_tensors(folder / STATE_FILE)
        obj.input_shape_ = tuple(int(s) for s in meta["input_shape"])
        obj.holdout_scores_ = tensors.pop("attributor.holdout_scores")
        obj._restore(dict(meta.get("state") or {}), tensors)
        obj.threshold_ = float(meta["threshold"])
        return obj


#: Every single-model attributor, by kebab-case name: ``MODEL_ATTRIBUTORS.create("flipad", generator)``.
MODEL_ATTRIBUTORS: Registry[ModelAttributor] = Registry("model attributor")
