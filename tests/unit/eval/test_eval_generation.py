"""Fréchet distance against the direct scipy.linalg.sqrtm formula and Gaussian closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from genprov.eval import FrechetDistance, frechet_distance, frechet_distance_from_stats, gaussian_stats
from genprov.exceptions import DataError, NotFittedError


def _direct_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula (as in pytorch-fid), in float64."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * np.real(covmean)))


def test_matches_direct_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, b) == pytest.approx(_direct_fd(a, b), rel=1e-8)
    # tensors and arrays give the same number
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        _direct_fd(a.astype(np.float32), b.astype(np.float32)), rel=1e-5
    )


def test_identical_sets_give_zero() -> None:
    a = np.random.default_rng(1).normal(size=(50, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    # also with fewer samples than dimensions (singular covariance)
    wide = np.random.default_rng(2).normal(size=(5, 20))
    assert frechet_distance(wide, wide) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(frechet_distance(wide, wide + 1.0))


def test_closed_form_for_known_gaussians() -> None:
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance_from_stats([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: ||mu_a - mu_b||^2 + sum (sqrt(va) - sqrt(vb))^2
    va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum())
    assert frechet_distance_from_stats(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(expected)
    # invariant under a common rotation of both Gaussians
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    rotated = frechet_distance_from_stats(q @ mu_a, q @ np.diag(va) @ q.T, q @ mu_b, q @ np.diag(vb) @ q.T)
    assert rotated == pytest.approx(expected)


def test_samples_of_known_gaussians_approach_the_closed_form() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal(1.0, 2.0, size=(20000, 2))
    expected = 2 * 1.0**2 + 2 * (1.0 - 2.0) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_gaussian_stats_match_numpy() -> None:
    x = np.random.default_rng(5).normal(size=(30, 3))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "same feature dimension"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "NaN"),
        (np.zeros(5), np.zeros((5, 3)), "shape"),
    ],
)
def test_bad_inputs_raise(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        frechet_distance(a, b)


def test_frechet_distance_class_uses_extractor_in_batches_without_grad() -> None:
    weight = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    grad_modes: list[bool] = []

    def extractor(x: torch.Tensor) -> torch.Tensor:
        grad_modes.append(torch.is_grad_enabled())
        return x.flatten(1) @ weight

    real = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    fake = torch.randn(30, 1, 4, 4, generator=torch.Generator().manual_seed(2)) + 0.3
    small = FrechetDistance(extractor, batch_size=7).reference(real)
    big = FrechetDistance(extractor, batch_size=1000).reference(real)
    assert len(grad_modes) == 6 + 1
    assert not any(grad_modes)
    expected = frechet_distance((real.flatten(1) @ weight).double(), (fake.flatten(1) @ weight).double())
    assert small.score(fake) == pytest.approx(expected, rel=1e-5)
    assert big.score(fake) == pytest.approx(small.score(fake), rel=1e-6)  # float32 matmul per batch
    assert small.n_reference_ == 40
    assert small.mu_.shape == (5,)


def test_frechet_distance_class_flattens_and_checks_outputs() -> None:
    fd = FrechetDistance(lambda x: x, batch_size=4)
    real = torch.randn(10, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    assert fd.reference(real).score(real) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(DataError, match="dimension"):
        fd.score(torch.randn(10, 3, 2, 2))
    with pytest.raises(NotFittedError, match="reference"):
        FrechetDistance(lambda x: x).score(real)
    with pytest.raises(DataError, match="must return a tensor"):
        FrechetDistance(lambda x: x.sum()).reference(real)
    with pytest.raises(DataError, match="at least 2"):
        fd.reference(real[:1])
