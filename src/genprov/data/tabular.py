"""Tabular datasets: scikit-learn's bundled sets and CSV files, scaled per column to [-1, 1].

Each column ``j`` is mapped with ``2 * (v - low[j]) / (high[j] - low[j]) - 1`` where ``low``/``high`` are
the column's minimum and maximum over the whole source (before any ``n`` subset, so the scale does not
depend on ``n``). A constant column maps to 0. :meth:`TabularDataset.inverse_transform` maps model outputs
back to the original units.

Built-in names: ``wine``, ``breast-cancer``, ``iris`` (classification, labels = classes) and ``diabetes``
(regression: the disease-progression target is kept as the last feature column ``progression``, and the
set has no labels). A CSV file needs a header row; a column named ``label`` becomes the labels (integers,
or strings mapped to sorted class names).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.config import did_you_mean
from genprov.data.dataset import fingerprint_arrays, sample_indices
from genprov.exceptions import ConfigError, DataError

__all__ = ["TABULAR_DATASETS", "TabularDataset", "load_tabular"]


@dataclass(eq=False, repr=False)
class TabularDataset:
    """A table of numeric features scaled per column to [-1, 1], with optional labels.

    Attributes:
        features: (N, D) float32 tensor in [-1, 1].
        labels: (N,) int64 tensor, or ``None``.
        column_names: The D feature names.
        name: Where the data came from.
        low: (D,) float64 column minima in original units.
        high: (D,) float64 column maxima in original units.
        class_names: Names of the label classes, or ``None``.
    """

    features: Tensor
    labels: Tensor | None
    column_names: tuple[str, ...]
    name: str
    low: np.ndarray
    high: np.ndarray
    class_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.dtype != torch.float32:
            raise DataError(
                f"{self.name} features must be a float32 (N, D) tensor; got {tuple(self.features.shape)} {self.features.dtype}."
            )
        d = self.features.shape[1]
        if len(self.column_names) != d or self.low.shape != (d,) or self.high.shape != (d,):
            raise DataError(
                f"{self.name}: {d} feature columns need {d} column names and (D,) low/high arrays; got "
                f"{len(self.column_names)} names, low {self.low.shape}, high {self.high.shape}."
            )
        if self.labels is not None and self.labels.shape != (self.features.shape[0],):
            raise DataError(
                f"{self.name} has {self.features.shape[0]} rows but labels of shape {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """Row ``i`` as a (D,) tensor and its label (-1 when the set has no labels)."""
        return self.features[i], int(self.labels[i]) if self.labels is not None else -1

    def __repr__(self) -> str:
        return f"TabularDataset(name={self.name!r}, n={len(self)}, d={self.n_features})"

    @property
    def n_features(self) -> int:
        """D, the number of feature columns."""
        return int(self.features.shape[1])

    def transform(self, x: Tensor | np.ndarray) -> Tensor:
        """Scale rows in original units to [-1, 1] with this set's ``low``/``high``.

        Args:
            x: (n, D) values in original units.

        Returns:
            (n, D) float32 tensor (constant columns give 0).
        """
        values = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        return torch.from_numpy(_scale(values, self.low, self.high))

    def inverse_transform(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Map scaled rows back to original units.

        Args:
            x: (n, D) values on the [-1, 1] scale (e.g. a model's samples).

        Returns:
            (n, D) float64 array in original units (constant columns give their constant).
        """
        values = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        if values.shape[-1] != self.n_features:
            raise DataError(f"inverse_transform expects {self.n_features} columns; got shape {values.shape}.")
        return np.where(self.high > self.low, (values + 1.0) / 2.0 * _span(self.low, self.high) + self.low, self.low)

    def fingerprint(self) -> str:
        """Stable 16-digit hex SHA-256 of features, labels and column scale, for manifests."""
        labels = self.labels.numpy() if self.labels is not None else None
        return fingerprint_arrays(self.features.contiguous().numpy(), labels, self.low, self.high)


def _span(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.where(high > low, high - low, 1.0)


def _scale(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(n, D) float32 values scaled column-wise from [low, high] to [-1, 1]; constant columns give 0."""
    scaled = np.where(high > low, 2.0 * (values - low) / _span(low, high) - 1.0, 0.0)
    return scaled.astype(np.float32)


def _sklearn(loader_name: str, *, target_column: str | None = None) -> Callable[[], tuple[Any, ...]]:
    """A loader for a scikit-learn bundled set: returns (values, columns, labels, class_names)."""

    def load() -> tuple[np.ndarray, list[str], np.ndarray | None, tuple[str, ...] | None]:
        import sklearn.datasets

        kwargs = {"scaled": False} if loader_name == "load_diabetes" else {}
        bunch = getattr(sklearn.datasets, loader_name)(**kwargs)
        values = np.asarray(bunch.data, dtype=np.float64)
        columns = [str(c).replace(" ", "_") for c in bunch.feature_names]
        if target_column is not None:
            values = np.column_stack([values, np.asarray(bunch.target, dtype=np.float64)])
            return values, [*columns, target_column], None, None
        return values, columns, np.asarray(bunch.target, dtype=np.int64), tuple(str(c) for c in bunch.target_names)

    return load


_SKLEARN: dict[str, Callable[[], tuple[Any, ...]]] = {
    "wine": _sklearn("load_wine"),
    "breast-cancer": _sklearn("load_breast_cancer"),
    "iris": _sklearn("load_iris"),
    "diabetes": _sklearn("load_diabetes", target_column="progression"),
}

#: Names :func:`load_tabular` accepts besides CSV paths.
TABULAR_DATASETS: tuple[str, ...] = tuple(sorted(_SKLEARN))


def _read_csv(path: Path) -> tuple[np.ndarray, list[str], np.ndarray | None, tuple[str, ...] | None]:
    """Parse a CSV with a header row; a ``label`` column (any case) becomes the labels."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if len(rows) < 2:
        raise DataError(f"{path} needs a header row and at least one data row; it has {len(rows)} row(s).")
    header = [h.strip() for h in rows[0]]
    label_col = next((j for j, h in enumerate(header) if h.lower() == "label"), None)
    feature_cols = [j for j in range(len(header)) if j != label_col]
    if not feature_cols:
        raise DataError(f"{path} has no feature columns besides 'label'.")
    values = np.empty((len(rows) - 1, len(feature_cols)), dtype=np.float64)
    raw_labels: list[str] = []
    for r, row in enumerate(rows[1:]):
        line = r + 2  # 1-based, after the header
        if len(row) != len(header):
            raise DataError(f"{path} line {line} has {len(row)} fields but the header has {len(header)}.")
        for k, j in enumerate(feature_cols):
            cell = row[j].strip()
            if not cell:
                raise DataError(
                    f"{path} line {line}, column {header[j]!r} is empty (a missing value); fill or drop missing "
                    "values first."
                )
            try:
                number = float(cell)
            except ValueError:
                raise DataError(
                    f"{path} line {line}, column {header[j]!r}: {cell!r} is not a number. Tabular features must "
                    "be numeric; encode categories as numbers or drop the column."
                ) from None
            if not math.isfinite(number):
                raise DataError(
                    f"{path} line {line}, column {header[j]!r} is {cell!r} (NaN or infinite); fill or drop "
                    "missing values first."
                )
            values[r, k] = number
        if label_col is not None:
            raw_labels.append(row[label_col].strip())
    columns = [header[j] for j in feature_cols]
    if label_col is None:
        return values, columns, None, None
    if any(v == "" for v in raw_labels):
        line = raw_labels.index("") + 2
        raise DataError(f"{path} line {line} has an empty 'label'; every row needs a label.")
    try:
        ints = [int(v) for v in raw_labels]
    except ValueError:
        names = tuple(sorted(set(raw_labels)))
        lookup = {name: i for i, name in enumerate(names)}
        return values, columns, np.array([lookup[v] for v in raw_labels], dtype=np.int64), names
    return values, columns, np.array(ints, dtype=np.int64), None


def load_tabular(name_or_path: str | Path, *, n: int | None = None, seed: int = 0) -> TabularDataset:
    """Load a tabular dataset scaled per column to [-1, 1].

    Args:
        name_or_path: One of :data:`TABULAR_DATASETS` (``"wine"``, ``"breast-cancer"``, ``"iris"``,
            ``"diabetes"``; bundled with scikit-learn, offline) or a CSV file with a header row and an
            optional ``label`` column.
        n: Keep a random subset of ``n`` rows chosen by ``seed`` (``None`` = all rows).
        seed: Seed of the subset choice.

    Returns:
        A :class:`TabularDataset`; ``low``/``high`` are taken over all rows of the source.

    Raises:
        ConfigError: On an unknown name that is not a CSV path (with a "did you mean" hint).
        DataError: On a missing file, a non-numeric or NaN cell (naming line and column), or bad ``n``.
    """
    key = str(name_or_path)
    if key in _SKLEARN:
        values, columns, labels, class_names = _SKLEARN[key]()
    elif key.lower().endswith(".csv") or Path(key).is_file():
        values, columns, labels, class_names = _read_csv(Path(key))
    else:
        raise ConfigError(
            f"Unknown tabular dataset {key!r}.{did_you_mean(key, TABULAR_DATASETS)} "
            f"Choose one of: {', '.join(TABULAR_DATASETS)}, or pass a CSV file path."
        )
    low, high = values.min(axis=0), values.max(axis=0)
    chosen = sample_indices(len(values), n, seed)
    if chosen is not None:
        values = values[chosen]
        labels = labels[chosen] if labels is not None else None
    return TabularDataset(
        features=torch.from_numpy(_scale(values, low, high)),
        labels=torch.from_numpy(labels) if labels is not None else None,
        column_names=tuple(columns),
        name=key,
        low=low,
        high=high,
        class_names=class_names,
    )
