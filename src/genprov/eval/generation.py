"""Fréchet distance between two sets of samples in a pluggable feature space.

The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017, "GANs trained by
a two time-scale update rule...", eq. 6; FID when the features come from Inception-v3) is

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

genprov does not ship Inception weights (and runs offline on 8x8 digits), so the feature extractor is a
parameter: by default the experiments layer passes the ``.features`` method of a classifier trained on the
same dataset as the generators. Numbers are therefore comparable within one feature space only, never
with published FID values.

The matrix square root is computed in float64 with symmetric eigendecompositions,
``Tr((S_a S_b)^{1/2}) = Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})``, which stays real and stable for singular
covariances (fewer samples than feature dimensions), unlike ``scipy.linalg.sqrtm`` of the non-symmetric
product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from genprov.exceptions import DataError, NotFittedError
from genprov.utils.arrays import ArrayLike, as_float_array
from genprov.utils.validation import check_finite

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FrechetDistance", "frechet_distance", "frechet_distance_from_stats", "gaussian_stats"]


def gaussian_stats(features: ArrayLike, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set, in float64.

    Args:
        features: (n, d) features, n >= 2.
        name: How error messages refer to ``features``.

    Returns:
        ``(mu, sigma)`` of shapes (d,) and (d, d).

    Raises:
        DataError: If fewer than 2 rows, not 2-D, or NaN / infinite values.
    """
    x = as_float_array(features, name, ndim=2, min_len=2)
    mu = x.mean(axis=0)
    centered = x - mu
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu_a: ArrayLike, sigma_a: ArrayLike, mu_b: ArrayLike, sigma_b: ArrayLike) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b).

    Args:
        mu_a: (d,) mean of the first Gaussian.
        sigma_a: (d, d) covariance (symmetric PSD) of the first Gaussian.
        mu_b: (d,) mean of the second Gaussian.
        sigma_b: (d, d) covariance of the second Gaussian.

    Returns:
        The squared Fréchet (2-Wasserstein) distance, >= 0; lower = more similar.

    Raises:
        DataError: If the dimensions do not match.
    """
    ma = as_float_array(mu_a, "mu_a", ndim=1)
    mb = as_float_array(mu_b, "mu_b", ndim=1)
    sa = as_float_array(sigma_a, "sigma_a", ndim=2)
    sb = as_float_array(sigma_b, "sigma_b", ndim=2)
    d = ma.shape[0]
    if mb.shape != (d,) or sa.shape != (d, d) or sb.shape != (d, d):
        raise DataError(
            "The two feature sets must have the same dimension d: got means of shapes "
            f"{ma.shape} and {mb.shape}, covariances {sa.shape} and {sb.shape}. "
            "Use the same feature extractor for both sets."
        )
    root_a = _psd_sqrt(sa)
    middle = root_a @ sb @ root_a
    cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum())
    diff = ma - mb
    value = float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * cross)
    return max(value, 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        feats_a: (n_a, d) features of the first set (e.g. real images), n_a >= 2.
        feats_b: (n_b, d) features of the second set (e.g. generated images), n_b >= 2.

    Returns:
        FD >= 0 (float64 arithmetic); 0 for identical sets, lower = more similar.

    Raises:
        DataError: On fewer than 2 samples in a set, mismatched feature dimensions, or NaN.

    Example:
        >>> a = np.random.default_rng(0).normal(size=(500, 3))
        >>> round(frechet_distance(a, a), 9)
        0.0
    """
    mu_a, sigma_a = gaussian_stats(feats_a, "feats_a")
    mu_b, sigma_b = gaussian_stats(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise DataError(
            f"feats_a and feats_b must have the same feature dimension; got {mu_a.shape[0]} and {mu_b.shape[0]}. "
            "Use the same feature extractor for both sets."
        )
    return frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b)


class FrechetDistance:
    """Fréchet distance of generated samples to a reference set, in a pluggable feature space.

    genprov's default extractor is the ``.features`` method of a small classifier trained on the same
    dataset as the generator (the experiments layer builds it); any ``Callable[[Tensor], Tensor]`` that
    maps a batch (b, ...) to features (b, d) works. Put a module-based extractor in ``eval()`` mode first.
    Outputs with more than two dimensions are flattened to (b, -1).

    Example:
        >>> fd = FrechetDistance(lambda x: x.flatten(1), batch_size=64)
        >>> real = torch.randn(200, 1, 2, 2)
        >>> round(fd.reference(real).score(real), 6)
        0.0

    Attributes:
        mu_: (d,) float64 mean of the reference features (after :meth:`reference`).
        sigma_: (d, d) float64 covariance of the reference features.
        n_reference_: Number of reference samples.
    """

    def __init__(
        self,
        extractor: Callable[[Tensor], Tensor],
        *,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        """Store the extractor; nothing is computed until :meth:`reference`.

        Args:
            extractor: Maps a batch (b, ...) to features (b, d), e.g. ``classifier.features``.
            batch_size: Samples per extractor call.
            device: Where batches are moved before the extractor is called; ``None`` leaves them as given.
        """
        self.extractor = extractor
        self.batch_size = batch_size
        self.device = device

    def features(self, samples: Tensor, name: str = "samples") -> np.ndarray:
        """Features of ``samples`` computed in batches under ``torch.no_grad()``.

        Args:
            samples: (n, ...) batch the extractor accepts, e.g. images (n, C, H, W) in [-1, 1].
            name: How error messages refer to ``samples``.

        Returns:
            (n, d) float64 numpy array.
        """
        if not isinstance(samples, Tensor) or samples.ndim < 2:
            shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
            raise DataError(f"{name} must be a tensor of shape (n, ...); got {shape}.")
        if samples.shape[0] < 2:
            raise DataError(f"{name} needs at least 2 samples to estimate a covariance; got {samples.shape[0]}.")
        if int(self.batch_size) < 1:
            raise DataError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        check_finite(samples, name)
        chunks = []
        with torch.no_grad():
            for start in range(0, samples.shape[0], int(self.batch_size)):
                batch = samples[start : start + int(self.batch_size)]
                if self.device is not None:
                    batch = batch.to(self.device)
                out = self.extractor(batch)
                if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != batch.shape[0]:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise DataError(
                        f"The feature extractor must return a tensor (b, d) for a batch of b={batch.shape[0]}; got {got}."
                    )
                chunks.append(out.reshape(out.shape[0], -1).detach().to("cpu", torch.float64).numpy())
        return np.concatenate(chunks, axis=0)

    def reference(self, real: Tensor) -> Self:
        """Compute and cache the feature statistics of the reference (real) samples.

        Args:
            real: (n, ...) reference samples, n >= 2.

        Returns:
            ``self``.
        """
        self.mu_, self.sigma_ = gaussian_stats(self.features(real, "real"), "reference features")
        self.n_reference_ = int(real.shape[0])
        return self

    def score(self, fake: Tensor) -> float:
        """Fréchet distance of ``fake`` to the cached reference; lower = closer to the reference.

        Args:
            fake: (m, ...) samples to score, m >= 2, same kind as the reference.

        Raises:
            NotFittedError: If :meth:`reference` was not called.
            DataError: If the feature dimensions differ or the input is invalid.
        """
        if not hasattr(self, "mu_"):
            raise NotFittedError("FrechetDistance.score needs reference statistics; call .reference(real) first.")
        mu, sigma = gaussian_stats(self.features(fake, "fake"), "fake features")
        if mu.shape != self.mu_.shape:
            raise DataError(
                f"fake features have dimension {mu.shape[0]} but the reference has {self.mu_.shape[0]}; "
                "score with the same extractor the reference was computed with."
            )
        return frechet_distance_from_stats(self.mu_, self.sigma_, mu, sigma)
