"""Deep SAD: score direction and threshold on two Gaussians, determinism, state round trip, errors."""

from __future__ import annotations

import pytest
import torch

from genprov.attribution.model.detectors import DETECTORS, DeepSAD, DeepSADConfig, DeepSADNet
from genprov.eval import roc_auc
from genprov.exceptions import ConfigError, DataError, NotFittedError
from genprov.metrics import threshold_at_fnr

FAST = DeepSADConfig(widths=(16,), rep_dim=8, n_epochs=15, lr=1e-3, lr_milestones=(10,), batch_size=64)


def _gaussians(n: int, shift: float, seed: int, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    own = torch.randn(n, d, generator=gen)
    other = torch.randn(n, d, generator=gen) + shift
    return own, other


def test_score_direction_and_threshold_on_two_gaussians() -> None:
    own, other = _gaussians(300, 3.0, 0)
    det = DeepSAD(FAST).fit(own[:200], other[:200])
    s_own, s_other = det.score(own[200:]), det.score(other[200:])
    assert roc_auc(s_own, s_other) > 0.97  # own samples score higher
    thr = threshold_at_fnr(s_own, 0.05)
    assert float((s_own < thr).float().mean()) <= 0.05 + 1e-6
    assert float((s_other >= thr).float().mean()) < 0.2
    assert torch.equal(det.score(own[:5]), -det.distances(own[:5]))


def test_one_class_without_negatives_still_ranks_outliers_lower() -> None:
    own, other = _gaussians(300, 6.0, 1)
    det = DeepSAD(FAST).fit(own[:200])
    assert roc_auc(det.score(own[200:]), det.score(other[200:])) > 0.9


def test_conv_variant_on_feature_maps() -> None:
    gen = torch.Generator().manual_seed(2)
    own = torch.randn(160, 3, 8, 8, generator=gen)
    other = torch.randn(160, 3, 8, 8, generator=gen)
    other[:, 0, :4] += 2.0
    det = DeepSAD(FAST).fit(own[:120], other[:120])
    assert roc_auc(det.score(own[120:]), det.score(other[120:])) > 0.95
    net = det.net_
    assert all(
        getattr(m, "bias", None) is None for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    assert all(not m.affine for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_center_entries_are_at_least_eps() -> None:
    own, other = _gaussians(50, 1.0, 3)
    det = DeepSAD(FAST.replace(n_epochs=1)).fit(own, other)
    assert bool((det.center_.abs() >= 0.1 - 1e-7).all())


def test_same_seed_same_scores_and_state_round_trip() -> None:
    own, other = _gaussians(80, 2.0, 4)
    a = DeepSAD(FAST.replace(n_epochs=3)).fit(own, other, seed=7)
    b = DeepSAD(FAST.replace(n_epochs=3)).fit(own, other, seed=7)
    c = DeepSAD(FAST.replace(n_epochs=3)).fit(own, other, seed=8)
    torch.testing.assert_close(a.score(other), b.score(other))
    assert not torch.allclose(a.score(other), c.score(other))
    meta, tensors = a.state()
    restored = DeepSAD(FAST.replace(n_epochs=3))
    restored.restore(meta, tensors)
    torch.testing.assert_close(restored.score(other), a.score(other))


def test_registry_and_errors() -> None:
    assert "deep-sad" in DETECTORS
    assert isinstance(DETECTORS.create("deep-sad", config={"rep_dim": 4}), DeepSAD)
    with pytest.raises(NotFittedError):
        DeepSAD().score(torch.zeros(2, 3))
    with pytest.raises(DataError, match="at least 2"):
        DeepSAD(FAST).fit(torch.zeros(1, 3))
    with pytest.raises(DataError, match="per-sample shape"):
        DeepSADNet((2, 3), FAST)
    det = DeepSAD(FAST.replace(n_epochs=1)).fit(torch.randn(10, 3))
    with pytest.raises(DataError, match="per-sample shape"):
        det.score(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="kernel_size"):
        DeepSADConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="widths"):
        DeepSADConfig(widths=())
