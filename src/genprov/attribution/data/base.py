"""The data-attribution interface: "which training examples shaped this output?".

A :class:`DataAttributor` is fitted on a training set (its per-example features go to an optional
:class:`~genprov.storage.FeatureStore`), then scores queries against every training example:
``scores(queries)`` is ``(n_queries, n_train)``, higher = more positive influence (the example made the
model better at the query, e.g. lowered its diffusion loss). ``attribute(queries, k)`` returns the top-k
as a :class:`~genprov.results.DataAttributionResult`.

:class:`EnsembleAttributor` averages the scores of several fitted attributors, e.g. TRAK over several
checkpoints or independently trained models (Park et al., 2023, sec. 3, step 5).

``featurize(batch, indices)`` returns the ``(b, k)`` features rather than storing them itself. The caller (a shard of :meth:`DataAttributor.fit`, or a remote worker) decides where they go,
and tests can compare them with a reference directly.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from genprov.config import Config
from genprov.exceptions import ConfigError, DataError, NotFittedError
from genprov.results import DataAttributionResult
from genprov.storage import FeatureStore

__all__ = [
    "DataAttributor",
    "EnsembleAttributor",
    "RunningTopK",
    "StoreLike",
    "TopK",
    "TrainingSet",
    "check_top_k",
    "merge_top_k",
    "top_k",
    "training_images",
]

#: Where features go: a store object, a folder path, or ``None`` (in memory).
StoreLike: TypeAlias = "FeatureStore | str | os.PathLike[str] | None"
#: A training set: an ``ImageDataset`` (anything with ``.images``) or an (N, C, H, W) tensor.
TrainingSet: TypeAlias = Any


def training_images(train: TrainingSet, name: str = "train") -> Tensor:
    """The (N, C, H, W) float tensor of ``train`` (an ``ImageDataset``-like object or a tensor).

    Raises:
        DataError: If ``train`` is neither, or is empty.
    """
    images = train if isinstance(train, Tensor) else getattr(train, "images", None)
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise DataError(
            f"{name} must be an image dataset (with .images) or a float (N, C, H, W) tensor; got "
            f"{type(train).__name__}."
        )
    if len(images) == 0:
        raise DataError(f"{name} is empty; pass at least one image.")
    return images


def top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices and values of the ``k`` largest scores per row, sorted descending (ties: lower index first).

    Args:
        scores: (n_queries, n_train).
        k: Number to keep (at most ``n_train``).

    Returns:
        ``(indices (n_queries, k) int64, values (n_queries, k))``.
    """
    check_top_k(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return order, torch.gather(scores, 1, order)


def check_top_k(k: int, n_train: int, name: str = "k") -> None:
    """Refuse a ``k`` that is not an integer in ``[1, n_train]``.

    Raises:
        ConfigError: Naming ``name``, the range and the value.
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_train:
        raise ConfigError(f"{name} must be an integer in [1, {n_train}] (the training set size); got {k!r}.")


def merge_top_k(
    values: np.ndarray, indices: np.ndarray, k: int, *, lowest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row's candidates, exactly as :func:`top_k` orders a full row.

    Merging a running top-k with each new block of columns (or the top-k of several workers' blocks) gives the
    top-k of the whole row: the candidates' order never matters, only their values and indices.

    Args:
        values: (n_rows, m) candidate scores, m >= k.
        indices: (n_rows, m) or (m,) their training indices (distinct within a row).
        k: How many to keep.
        lowest: Keep the ``k`` lowest (most negative) instead: value ascending, ties higher index first, i.e. the
            reverse of :func:`top_k`'s full order, as ``report.Gallery.influence`` lists opponents.

    Returns:
        ``(values (n_rows, k), indices (n_rows, k) int64)``; highest first (ties: lower index first), or with
        ``lowest`` lowest first.
    """
    n_rows, m = values.shape
    if not 1 <= k <= m:
        raise ConfigError(f"merge_top_k needs 1 <= k <= {m} candidates per row; got k={k}.")
    idx = np.broadcast_to(np.asarray(indices, dtype=np.int64), values.shape)
    key = -values if lowest else values  # larger key first
    tie = -idx if lowest else idx  # then smaller tie first
    # every candidate at least as good as the k-th best key of its row (ties at the boundary included) ...
    kth = np.partition(key, m - k, axis=1)[:, m - k]
    rows, cols = np.nonzero(key >= kth[:, None])
    # ... sorted by row, key descending, tie ascending; the first k of each row are kept
    order = np.lexsort((tie[rows, cols], -key[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keep = cols[rank < k].reshape(n_rows, k)
    return np.take_along_axis(values, keep, axis=1), np.take_along_axis(idx, keep, axis=1)


@dataclass(frozen=True)
class TopK:
    """The most positive (and optionally most negative) training examples of each query.

    Attributes:
        indices: (n_queries, k) int64 training indices, highest score first (ties: lower index first).
        scores: (n_queries, k) float64 their scores.
        negative_indices: (n_queries, k') the lowest-scored, lowest first (the reverse of the full order), or
            ``None`` when not asked for.
        negative_scores: (n_queries, k') their scores, or ``None``.
    """

    indices: np.ndarray
    scores: np.ndarray
    negative_indices: np.ndarray | None = None
    negative_scores: np.ndarray | None = None


class RunningTopK:
    """The top-k of each query's scores, updated block by block (any order of blocks; exact, see :func:`merge_top_k`).

    Args:
        n_queries: Rows.
        k: Kept per row.
        dtype: Precision of the values kept.
        lowest: Keep the ``k`` lowest instead (see :func:`merge_top_k`).
    """

    def __init__(self, n_queries: int, k: int, *, dtype: str = "float64", lowest: bool = False) -> None:
        self.k, self.lowest = k, lowest
        self._values = np.empty((n_queries, k), dtype=dtype)
        self._indices = np.empty((n_queries, k), dtype=np.int64)
        self._seen = np.zeros(n_queries, dtype=np.int64)

    def update(self, rows: slice, cols: slice, values: np.ndarray) -> None:
        """Merge the scores ``values`` of queries ``rows`` (a block of consecutive queries that have seen the same
        number of columns so far) on training columns ``cols``."""
        have = min(int(self._seen[rows.start]), self.k) if rows.stop > rows.start else 0
        candidates = np.concatenate([self._values[rows, :have], values], axis=1)
        block_indices = np.broadcast_to(np.arange(cols.start, cols.stop, dtype=np.int64), values.shape)
        indices = np.concatenate([self._indices[rows, :have], block_indices], axis=1)
        keep = min(self.k, candidates.shape[1])
        if keep:
            top_values, top_indices = merge_top_k(candidates, indices, keep, lowest=self.lowest)
            self._values[rows, :keep], self._indices[rows, :keep] = top_values, top_indices
        self._seen[rows] += values.shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (n_queries, k) int64, values (n_queries, k) float64)``.

        Raises:
            DataError: If a query has seen fewer than ``k`` columns.
        """
        if len(self._seen) and int(self._seen.min()) < self.k:
            raise DataError(
                f"RunningTopK saw {int(self._seen.min())} columns for a query; it needs at least k={self.k}."
            )
        return self._indices, self._values.astype(np.float64)


class DataAttributor(ABC):
    """Scores every training example's influence on a query.

    The contract every data attributor satisfies (TRAK, D-TRAK, the TracIn family, similarity):

    * :meth:`fit` featurizes the training set with :meth:`featurize` into a store described by
      :meth:`store_spec` (a store of another spec is refused) and prepares scoring;
    * :meth:`featurize_queries` computes a query's features ONCE (for TRAK: its projected gradients);
      :meth:`scores_from_features` turns them into the (n_queries, n_train) scores, higher = more positive
      influence; :meth:`scores` chains the two;
    * :meth:`attribute` always returns a :class:`~genprov.results.DataAttributionResult` (top-k indices and
      scores, sorted descending); :meth:`result_from_scores` builds it from scores already computed, so a
      caller needing both the full scores and the top k featurizes the queries once.

    The constructor stores its arguments; learned state ends in ``_``; calling a scoring method before
    :meth:`fit` raises :class:`~genprov.exceptions.NotFittedError`.
    """

    #: Method name recorded in results (e.g. ``"trak"``, ``"d-trak"``).
    method: str = "data-attributor"
    #: The method's config (recorded in results).
    config: Config | None = None

    @abstractmethod
    def fit(self, train: TrainingSet, store: StoreLike = None, *, show_progress: bool | None = None) -> DataAttributor:
        """Featurize the training set (resuming ``store`` if given) and prepare scoring; returns ``self``."""

    @abstractmethod
    def featurize(self, batch: Tensor, indices: Tensor) -> Tensor:
        """Features of a batch of examples (what each shard of :meth:`fit` computes).

        Args:
            batch: (b, C, H, W) examples.
            indices: (b,) their indices in the training set (seeds per-example randomness).

        Returns:
            (b, k) float32 features; row ``i`` depends only on ``batch[i]`` and ``indices[i]``.
        """

    @abstractmethod
    def featurize_queries(self, queries: Tensor) -> Tensor:
        """(n_queries, C, H, W) query images -> (n_queries, k) features (randomness seeded by each query's pixels)."""

    @abstractmethod
    def scores_from_features(self, query_features: Tensor) -> Tensor:
        """(n_queries, k) features from :meth:`featurize_queries` -> (n_queries, n_train) float scores."""

    @abstractmethod
    def store_spec(self, train: Tensor) -> dict[str, Any]:
        """What a feature store of the training images ``train`` must match (JSON-able; recorded in its manifest)."""

    def scores(self, queries: Tensor) -> Tensor:
        """(n_queries, n_train) float32 scores; higher = more positive influence on the query."""
        self._check_fitted()
        return self.scores_from_features(self.featurize_queries(queries)).to(torch.float32)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return getattr(self, "n_train_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(train) first.")

    def attribute(self, queries: Tensor, *, k: int = 10) -> DataAttributionResult:
        """The ``k`` most positively influential training examples of each query.

        Args:
            queries: (n_queries, C, H, W) images.
            k: Examples per query.

        Returns:
            :class:`DataAttributionResult` with (n_queries, k) ``indices`` and ``scores``, sorted descending.
        """
        return self.result_from_scores(self.scores(queries), k=k)

    def result_from_scores(self, scores: Tensor, *, k: int = 10) -> DataAttributionResult:
        """The :meth:`attribute` result of queries whose (n_queries, n_train) :meth:`scores` are given."""
        self._check_fitted()
        indices, values = top_k(scores, k)
        return self.result_from_top_k(TopK(indices.numpy(), values.to(torch.float64).numpy()))

    def result_from_top_k(self, top: TopK) -> DataAttributionResult:
        """The :meth:`attribute` result of a :class:`TopK` computed without the full scores (e.g. block-wise)."""
        config = self.config.to_dict() if self.config is not None else {}
        return DataAttributionResult(
            method=self.method,
            config=config,
            indices=np.asarray(top.indices).astype(np.int64),
            scores=np.asarray(top.scores, dtype=np.float64),
        )


class EnsembleAttributor(DataAttributor):
    """The mean of the scores of several attributors (e.g. TRAK over checkpoints or retrained models).

    Args:
        members: The attributors, all for the same training set.

    Each member gets its own store folder under the ensemble's: ``store/member-<i>``.
    """

    method = "ensemble"

    widths_: list[int]

    def __init__(self, members: Sequence[DataAttributor]) -> None:
        self.members = list(members)
        self.config = self.members[0].config if self.members else None
        self.method = f"ensemble[{self.members[0].method}]" if self.members else "ensemble"
        self.n_train_: int | None = None

    def fit(
        self, train: TrainingSet, store: StoreLike = None, *, show_progress: bool | None = None
    ) -> EnsembleAttributor:
        """Fit every member; member ``i`` uses ``store/member-<i>`` when ``store`` is a folder."""
        if not self.members:
            raise ConfigError("EnsembleAttributor needs at least one member.")
        if isinstance(store, FeatureStore):
            raise ConfigError("Pass the ensemble a store folder (each member gets a sub-folder), not a FeatureStore.")
        for i, member in enumerate(self.members):
            member_store = Path(store) / f"member-{i}" if store is not None else None
            member.fit(train, member_store, show_progress=show_progress)
        sizes = {int(getattr(m, "n_train_", -1)) for m in self.members}
        if len(sizes) != 1:
            raise DataError(f"ensemble members were fitted on training sets of different sizes: {sorted(sizes)}.")
        first = training_images(train)[:1]
        self.widths_ = [int(m.featurize(first, torch.zeros(1, dtype=torch.int64)).shape[1]) for m in self.members]
        self.n_train_ = sizes.pop()
        return self

    def featurize(self, batch: Tensor, indices: Tensor) -> Tensor:
        """The members' features side by side: (b, sum of member dims)."""
        return torch.cat([m.featurize(batch, indices) for m in self.members], dim=1)

    def featurize_queries(self, queries: Tensor) -> Tensor:
        """The members' query features side by side: (n_queries, sum of member dims)."""
        return torch.cat([m.featurize_queries(queries) for m in self.members], dim=1)

    def scores_from_features(self, query_features: Tensor) -> Tensor:
        """Mean of the members' scores of their column blocks of ``query_features``, (n_queries, n_train)."""
        self._check_fitted()
        parts = torch.split(query_features, self.widths_, dim=1)
        total = sum(m.scores_from_features(f).to(torch.float64) for m, f in zip(self.members, parts, strict=True))
        return torch.as_tensor(total) / len(self.members)

    def store_spec(self, train: Tensor) -> dict[str, Any]:
        """The members' specs (each member has its own store)."""
        return {"members": [m.store_spec(train) for m in self.members]}
