"""The four disjoint data splits of an explanation-privacy experiment.

GNIME's protocol (Jeong et al., NeurIPS 2022, Sec. 5) gives the defender (who trains the victim and
evaluation classifiers and the defense) one part of the data and the attacker another, which the attacker
splits 80/20 for training and early stopping. The original reported its figures on that early-stopping
split; genprov keeps a separate held-out test split for the final figures instead.

Example:
    >>> s = privacy_splits(100, seed=0)
    >>> [len(p) for p in (s.defender, s.attacker_train, s.attacker_val, s.test)]
    [50, 32, 8, 10]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from genprov.config import require
from genprov.data.splits import split_indices, stratified_split_indices
from genprov.exceptions import DataError

__all__ = ["PrivacySplits", "privacy_splits"]


@dataclasses.dataclass(frozen=True)
class PrivacySplits:
    """Disjoint sorted int64 index arrays into one dataset.

    Attributes:
        defender: Trains the victim and evaluation classifiers and the defense.
        attacker_train: Trains the inversion attacks.
        attacker_val: Early stopping of the attacks.
        test: Held out: the reported attack figures.
    """

    defender: np.ndarray
    attacker_train: np.ndarray
    attacker_val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"defender": ..., "attacker_train": ..., "attacker_val": ..., "test": ...}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {k: len(v) for k, v in self.as_dict().items()}


def privacy_splits(
    n: int,
    *,
    seed: int,
    labels: Sequence[int] | np.ndarray | Tensor | None = None,
    defender: float = 0.5,
    attacker_train: float = 0.32,
    attacker_val: float = 0.08,
    test: float = 0.1,
) -> PrivacySplits:
    """Split ``range(n)`` into defender / attacker-train / attacker-val / test parts that never overlap.

    Args:
        n: Number of examples.
        seed: Seed of the shuffle.
        labels: (n,) classes or identities: when given, every label is split separately in these
            proportions (per-identity split for faces: Olivetti's 10 images per person with fractions
            0.5 / 0.3 / 0.1 / 0.1 give 5 / 3 / 1 / 1 of every person); ``None``: one random split.
        defender: Fraction for the defender (paper: half).
        attacker_train: Fraction for the attacker's training (paper: 80% of the attacker's part).
        attacker_val: Fraction for the attacker's early stopping (paper: 20% of the attacker's part).
        test: Fraction held out for the reported figures.

    Returns:
        The :class:`PrivacySplits`; with fractions summing to 1 they cover ``range(n)``.

    Raises:
        ConfigError: Negative fractions or a sum above 1.
        DataError: ``labels`` of another length than ``n``, or an empty split.
    """
    fractions = [defender, attacker_train, attacker_val, test]
    require(
        all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in fractions),
        "fractions",
        "positive numbers (defender, attacker_train, attacker_val, test)",
        fractions,
    )
    if labels is None:
        parts = split_indices(n, fractions, seed=seed)
    else:
        arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        if arr.shape != (n,):
            raise DataError(f"labels must have shape (n,) = ({n},); got {arr.shape}.")
        parts = stratified_split_indices(arr, fractions, seed=seed)
    names = ("defender", "attacker_train", "attacker_val", "test")
    empty = [name for name, p in zip(names, parts, strict=True) if len(p) == 0]
    if empty:
        raise DataError(
            f"The split(s) {', '.join(empty)} came out empty for n={n} with fractions {fractions}; pass more "
            "examples or larger fractions."
        )
    return PrivacySplits(*parts)
