"""Keyed attribution rule, key geometry and metrics on hand-made cases (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.attribution.model.keyed import (
    AMBIGUOUS,
    NONE,
    KeyConstraintError,
    KeyedAttributionResult,
    KeyedGeneratorsConfig,
    attribution_rule,
    check_angle_feasible,
    key_angles,
    key_responses,
    threshold_angles,
)
from genprov.eval import attributability, distinguishability
from genprov.exceptions import ConfigError, DataError


def test_rule_on_hand_made_responses() -> None:
    responses = np.array(
        [
            [-1.0, 2.0, 3.0],  # only key 0 claims it
            [4.0, 0.5, -0.1],  # only key 2
            [1.0, 2.0, 3.0],  # nobody: authentic
            [-1.0, -2.0, 3.0],  # two keys: ambiguous
            [-1.0, 0.0, 3.0],  # on key 1's boundary: not "every other key > 0"
            [0.0, 1.0, 1.0],  # on key 0's boundary, no negative response
        ]
    )
    assert attribution_rule(responses).tolist() == [0, 2, NONE, AMBIGUOUS, AMBIGUOUS, AMBIGUOUS]
    assert attribution_rule(torch.from_numpy(responses)).tolist() == attribution_rule(responses).tolist()
    with pytest.raises(DataError, match="n_keys"):
        attribution_rule(np.zeros(3))


def test_rule_agrees_with_eval_attributability() -> None:
    rng = np.random.default_rng(0)
    responses = rng.normal(size=(200, 4))
    source = rng.integers(0, 4, 200)
    labels = attribution_rule(responses)
    by_rule = np.mean([(labels[source == m] == m).mean() for m in range(4)])
    assert attributability(-responses, source) == pytest.approx(by_rule)


def test_result_labels_counts_and_round_trip(tmp_path: Path) -> None:
    responses = np.array([[-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    result = KeyedAttributionResult(method="keyed", users=attribution_rule(responses), responses=responses)
    assert result.labels == ["user-0", "none", "ambiguous"]
    assert result.counts() == {"user-0": 1, "user-1": 0, "none": 1, "ambiguous": 1}
    loaded = KeyedAttributionResult.load(result.save(tmp_path / "attribution"))
    assert loaded.labels == result.labels and np.array_equal(loaded.responses, responses)
    with pytest.raises(DataError, match="users must have shape"):
        KeyedAttributionResult(method="keyed", users=np.zeros(2, dtype=np.int64), responses=responses)


def test_responses_and_angles() -> None:
    keys = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0]]).reshape(3, 1, 2, 2)
    images = torch.tensor([[0.5, -0.5, 1.0, 1.0]]).reshape(1, 1, 2, 2)
    assert key_responses(keys, images).tolist() == [[0.5, 0.0, -2.0]]
    angles = key_angles(keys)
    assert angles[0, 1] == pytest.approx(45.0) and angles[0, 2] == pytest.approx(90.0)
    assert np.allclose(np.diag(angles), 0.0, atol=1e-5)
    with pytest.raises(DataError, match="values each"):
        key_responses(keys, torch.zeros(1, 1, 3, 3))


def test_threshold_angles_match_the_explicit_condition() -> None:
    """Two unit keys in the plane, authentic points in the positive quadrant."""
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 1, 2)
    real = torch.tensor([[2.0, 1.0], [1.0, 3.0], [4.0, 2.0]]).reshape(3, 1, 1, 2)
    thresholds = threshold_angles(keys, real, margin=1.0)
    # pair (0, 1): min over x of x_1 / (x_0 + 1) = min(1/3, 3/2, 2/5) = 1/3
    assert thresholds[0, 1] == pytest.approx(math.degrees(math.acos(1 / 3)))
    assert thresholds[1, 0] == pytest.approx(math.degrees(math.acos(min(2 / 2, 1 / 4, 4 / 3))))
    assert np.isnan(thresholds[0, 0])
    # a key that an authentic point violates needs more than 90 degrees
    assert threshold_angles(keys, torch.tensor([[-1.0, 1.0]]).reshape(1, 1, 1, 2))[1, 0] > 90.0


def test_threshold_is_exactly_the_minimal_perturbation_condition() -> None:
    """Angle above the pair's threshold <=> every authentic point, moved by user i, stays positive on key j."""
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(20, 2, generator=gen) + 0.5  # authentic points in the positive quadrant
    agree = set()
    for trial in range(40):
        keys = torch.randn(2, 2, generator=gen).abs() * torch.tensor([[1.0, 0.3], [0.3, 1.0]]) + 0.05 * trial
        moved = real - ((real @ keys[0]) + 1.0)[:, None] * keys[0][None, :] / keys[0].dot(keys[0])
        stays = bool(((moved @ keys[1]) > 0).all())
        angle = key_angles(keys.reshape(2, 1, 1, 2))[0, 1]
        threshold = threshold_angles(keys.reshape(2, 1, 1, 2), real.reshape(-1, 1, 1, 2))[0, 1]
        assert stays == (angle > threshold)
        agree.add(stays)
    assert agree == {True, False}  # both outcomes occurred


def test_angle_feasibility() -> None:
    check_angle_feasible(4, 4, 90.0)
    check_angle_feasible(3, 2, 120.0)  # regular simplex in the plane
    with pytest.raises(KeyConstraintError, match="at most 4"):
        check_angle_feasible(5, 4, 90.0)
    with pytest.raises(KeyConstraintError, match=r"widest equal angle of 3 vectors is 120\.0"):
        check_angle_feasible(3, 64, 150.0)


def test_distinguishability_on_hand_made_responses() -> None:
    assert distinguishability(np.array([1.0, 2.0]), np.array([-1.0, -3.0])) == 1.0
    assert distinguishability(np.array([1.0, -2.0]), np.array([-1.0, 3.0, 2.0, 1.0])) == pytest.approx(
        0.5 * (0.5 + 0.25)
    )
    with pytest.raises(DataError, match="non-empty"):
        distinguishability(np.array([]), np.array([1.0]))


def test_configs_validate_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'crop'"):
        KeyedGeneratorsConfig(robust=("corp",))
    with pytest.raises(ConfigError, match="robust_keys"):
        KeyedGeneratorsConfig(robust=("blur",), robust_keys=True)
    with pytest.raises(ConfigError, match="target_angle"):
        KeyedGeneratorsConfig(target_angle=0.0)
    cfg = KeyedGeneratorsConfig.from_dict({"robust": ["noise"], "post_process": {"noise_sigma": [0.0, 0.5]}})
    assert cfg.robust == ("noise",) and cfg.post_process.noise_sigma == (0.0, 0.5)
    assert KeyedGeneratorsConfig.from_dict(cfg.to_dict()) == cfg
