"""Deterministic index splits and random subsets.

Both functions depend only on their arguments (never on global RNG state). :func:`random_subsets` draws
subset ``i`` from a seed derived from ``(seed, i)``, so asking for more subsets later (e.g. growing an LDS
experiment from 50 to 100 retrained models) leaves the first ones unchanged.

Example:
    >>> train, test = split_indices(10, [0.8, 0.2], seed=0)
    >>> len(train), len(test), sorted([*train, *test]) == list(range(10))
    (8, 2, True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from genprov.config import require
from genprov.utils.seeding import numpy_rng

__all__ = ["random_subsets", "split_indices", "stratified_split_indices"]


def _check_count(n: int, name: str) -> None:
    require(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0, name, "an integer >= 0", n)


def split_indices(n: int, fractions: Sequence[float], *, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts of the given fractions.

    Part boundaries are ``round(cumsum(fractions) * n)``, so the parts are disjoint and, when the
    fractions sum to 1, cover ``range(n)`` exactly.

    Args:
        n: Number of examples.
        fractions: Non-negative fractions summing to at most 1 (e.g. ``[0.8, 0.1, 0.1]``).
        seed: Seed of the shuffle.

    Returns:
        One sorted int64 index array per fraction.

    Raises:
        ConfigError: If a fraction is negative or not finite, or the fractions sum to more than 1.
    """
    _check_count(n, "n")
    fracs = [float(f) for f in fractions]
    require(len(fracs) > 0, "fractions", "a non-empty list of fractions", fractions)
    require(all(math.isfinite(f) and f >= 0 for f in fracs), "fractions", "non-negative numbers", fractions)
    total = math.fsum(fracs)
    require(total <= 1 + 1e-9, "fractions", "fractions summing to at most 1", fractions)
    order = numpy_rng(seed, "split-indices", n).permutation(n)
    bounds = [0, *(min(n, round(c * n)) for c in np.cumsum(fracs))]
    if abs(total - 1) <= 1e-9:
        bounds[-1] = n
    return [np.sort(order[a:b]).astype(np.int64) for a, b in itertools.pairwise(bounds)]


def random_subsets(n: int, n_subsets: int, fraction: float, *, seed: int) -> np.ndarray:
    """Draw ``n_subsets`` random subsets of ``range(n)``, each of size ``round(fraction * n)``.

    Subset ``i`` is drawn without replacement from ``numpy_rng(seed, "random-subsets", i)`` (a seed derived
    from ``(seed, i)`` by :func:`genprov.utils.derive_seed`), so it does not change when ``n_subsets``
    grows.

    Args:
        n: Number of examples.
        n_subsets: Number of subsets.
        fraction: Fraction of examples in each subset, in (0, 1].
        seed: Base seed.

    Returns:
        (n_subsets, round(fraction * n)) int64 array; each row sorted ascending.

    Raises:
        ConfigError: On a non-positive count, a fraction outside (0, 1], or an empty subset size.
    """
    _check_count(n, "n")
    _check_count(n_subsets, "n_subsets")
    require(n_subsets >= 1, "n_subsets", "an integer >= 1", n_subsets)
    require(math.isfinite(float(fraction)) and 0 < fraction <= 1, "fraction", "a number in (0, 1]", fraction)
    k = round(fraction * n)
    require(k >= 1, "fraction * n", "at least 1 (each subset needs an example)", fraction * n)
    out = np.empty((n_subsets, k), dtype=np.int64)
    for i in range(n_subsets):
        out[i] = np.sort(numpy_rng(seed, "random-subsets", i).choice(n, size=k, replace=False))
    return out


def stratified_split_indices(
    labels: Sequence[int] | np.ndarray | Tensor, fractions: Sequence[float], *, seed: int
) -> list[np.ndarray]:
    """Split every label's examples separately, so each part holds about the same share of every label.

    The examples of label ``c`` (in index order) are shuffled with a seed derived from ``(seed, c)`` and
    cut at ``round(cumsum(fractions) * n_c)``, as :func:`split_indices` does for the whole set. With
    Olivetti's 10 images per identity and ``fractions=[0.5, 0.3, 0.1, 0.1]`` every identity contributes
    exactly 5, 3, 1 and 1 images to the four parts (a per-identity split for face data).

    Args:
        labels: (n,) integer labels (classes or identities).
        fractions: Non-negative fractions summing to at most 1.
        seed: Seed of the shuffles.

    Returns:
        One sorted int64 index array per fraction; the parts never overlap and, when the fractions sum to
        1, cover ``range(n)``.

    Raises:
        ConfigError: On invalid fractions or labels that are not a 1-D sequence of integers.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    require(
        arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)),
        "labels",
        "a 1-D sequence of integers",
        f"shape {arr.shape}, dtype {arr.dtype}",
    )
    fracs = [float(f) for f in fractions]
    require(len(fracs) > 0, "fractions", "a non-empty list of fractions", fractions)
    require(all(math.isfinite(f) and f >= 0 for f in fracs), "fractions", "non-negative numbers", fractions)
    total = math.fsum(fracs)
    require(total <= 1 + 1e-9, "fractions", "fractions summing to at most 1", fractions)
    parts: list[list[np.ndarray]] = [[] for _ in fracs]
    for label in np.unique(arr):
        members = np.flatnonzero(arr == label)
        n = len(members)
        order = members[numpy_rng(seed, "stratified-split", int(label), n).permutation(n)]
        bounds = [0, *(min(n, round(c * n + 1e-9)) for c in np.cumsum(fracs))]
        if abs(total - 1) <= 1e-9:
            bounds[-1] = n
        for k, (a, b) in enumerate(itertools.pairwise(bounds)):
            parts[k].append(order[a:b])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, dtype=np.int64) for p in parts]
