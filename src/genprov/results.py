"""Result objects returned by genprov's methods.

Results are frozen dataclasses holding numpy arrays plus the method name and its config. ``save(path)``
writes ``path`` (an ``.npz`` with the arrays) and a JSON sidecar ``path.with_suffix(".json")`` with
everything else, both atomically; ``load(path)`` reads them back without unpickling anything.

One result type per family, returned by that family's ``attribute`` (its one meaning everywhere):
model attributors -> :class:`ModelAttributionResult`, keyed families -> :class:`KeyedAttributionResult`,
data attributors -> :class:`DataAttributionResult`; inversion attacks' ``invert`` ->
:class:`ReconstructionResult`. (Explainers' ``attribute`` is no attribution in this sense: it returns the
raw saliency tensor, see :class:`genprov.privacy.explainers.Explainer`.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from genprov.exceptions import DataError
from genprov.utils.io import atomic_save_npz, atomic_write_json, open_npz, read_json

__all__ = [
    "AMBIGUOUS",
    "NONE",
    "DataAttributionResult",
    "KeyedAttributionResult",
    "ModelAttributionResult",
    "ReconstructionResult",
    "Result",
]

R = TypeVar("R", bound="Result")

#: Attribution label of an image no key claims (authentic, or from a model outside the family).
NONE = -1
#: Attribution label of an image two or more keys claim, or whose responses sit exactly on a boundary.
AMBIGUOUS = -2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """Base of every result: array fields go to ``.npz``, the rest to a JSON sidecar.

    Subclass it (a frozen, kw-only dataclass naming its array fields in ``_arrays``) to give a new method's
    result the same ``save`` / ``load``.
    """

    _arrays: ClassVar[tuple[str, ...]] = ()

    method: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @staticmethod
    def files(path: str | Path) -> tuple[Path, Path]:
        """The two files :meth:`save` writes for ``path``: the ``.npz`` (suffix replaced) and its ``.json`` sidecar."""
        npz = Path(path).with_suffix(".npz")
        return npz, npz.with_suffix(".json")

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``, suffix added if missing) and its ``.json`` sidecar; return the ``.npz`` path."""
        path, sidecar = self.files(path)
        arrays = {name: getattr(self, name) for name in self._arrays if getattr(self, name) is not None}
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._arrays}
        meta["type"] = type(self).__name__
        atomic_save_npz(path, arrays)
        atomic_write_json(sidecar, meta)
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by :meth:`save`."""
        path, sidecar = cls.files(path)
        for p in (path, sidecar):
            if not p.is_file():
                raise DataError(
                    f"Cannot load {cls.__name__}: {p} does not exist. Save it with result.save(path) first."
                )
        meta = read_json(sidecar)
        if meta.pop("type", cls.__name__) != cls.__name__:
            raise DataError(f"{sidecar} holds a different result type; expected {cls.__name__}.")
        with open_npz(path, f"a saved {cls.__name__}") as npz:
            arrays = {name: npz[name] for name in cls._arrays if name in npz.files}
        return cls(**meta, **arrays)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataAttributionResult(Result):
    """Top-k training examples per query.

    Attributes:
        indices: (n_queries, k) int64 training indices, sorted by descending score.
        scores: (n_queries, k) float scores; higher = more positive influence on the query.
        soft: optional (n_queries, k) share of influence of each listed example (rows sum to <= 1).
        method: Name of the method that produced it (e.g. ``"d-trak"``).
        config: The method's config as a dict.
    """

    _arrays: ClassVar[tuple[str, ...]] = ("indices", "scores", "soft")

    indices: np.ndarray
    scores: np.ndarray
    soft: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.indices.shape != self.scores.shape or self.indices.ndim != 2:
            raise DataError(
                f"indices and scores must both have shape (n_queries, k); got {self.indices.shape} and {self.scores.shape}."
            )
        if self.soft is not None and self.soft.shape != self.scores.shape:
            raise DataError(f"soft must have the shape of scores {self.scores.shape}; got {self.soft.shape}.")

    @property
    def k(self) -> int:
        """Number of examples listed per query."""
        return int(self.indices.shape[1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelAttributionResult(Result):
    """Per-sample verdicts of a model attributor.

    Attributes:
        scores: (n,) float; higher = more likely made by the model studied.
        verdicts: (n,) bool; ``scores >= threshold``.
        threshold: The decision threshold.
    """

    _arrays: ClassVar[tuple[str, ...]] = ("scores", "verdicts")

    scores: np.ndarray
    verdicts: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.scores.shape != self.verdicts.shape:
            raise DataError(
                f"scores and verdicts must both have shape (n,); got {self.scores.shape} and {self.verdicts.shape}."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReconstructionResult(Result):
    """Inputs reconstructed by an inversion attack, with per-image metrics.

    Attributes:
        reconstructions: (n, C, H, W) float in [-1, 1].
        metrics: Mean metrics over the batch, e.g. ``{"mse": ..., "ssim": ...}``.
    """

    _arrays: ClassVar[tuple[str, ...]] = ("reconstructions",)

    reconstructions: np.ndarray
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyedAttributionResult(Result):
    """Attribution of images to the user models of a keyed family.

    Attributes:
        users: (n,) int64: the user index, :data:`NONE` (-1: no key claims it) or :data:`AMBIGUOUS`
            (-2: several keys claim it, or a response is exactly 0).
        responses: (n, n_keys) float ``phi_j^T x``; negative = claimed by key ``j``.
        method: ``"keyed"``.
        config: The family's config as a dict.
    """

    _arrays: ClassVar[tuple[str, ...]] = ("users", "responses")

    users: np.ndarray
    responses: np.ndarray

    def __post_init__(self) -> None:
        if self.responses.ndim != 2 or self.users.shape != (self.responses.shape[0],):
            raise DataError(
                f"users must have shape (n,) and responses (n, n_keys); got {self.users.shape} and "
                f"{self.responses.shape}."
            )

    @property
    def labels(self) -> list[str]:
        """``"user-<i>"``, ``"none"`` or ``"ambiguous"`` per image."""
        return [_label(int(u)) for u in self.users]

    def counts(self) -> dict[str, int]:
        """Number of images per label, users in index order, then ``none`` and ``ambiguous``."""
        out = {f"user-{i}": int((self.users == i).sum()) for i in range(self.responses.shape[1])}
        out["none"] = int((self.users == NONE).sum())
        out["ambiguous"] = int((self.users == AMBIGUOUS).sum())
        return out


def _label(user: int) -> str:
    return "none" if user == NONE else "ambiguous" if user == AMBIGUOUS else f"user-{user}"
