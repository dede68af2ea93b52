"""The typed result of ``genprov reproduce keyed``; :meth:`KeyedResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from genprov.experiments.base import ExperimentResult

__all__ = ["ConditionEvaluation", "ConditionMetrics", "GoalCheck", "KeyInfo", "KeyedResult", "UserMetrics"]


@dataclasses.dataclass(frozen=True)
class UserMetrics:
    """One user model of a family under one test condition (its PNG-saved samples)."""

    user: int
    #: ``1/2 [P_real(phi_i^T x > 0) + P_{G_i}(phi_i^T x < 0)]`` on held-out authentic images.
    distinguishability: float
    #: Share of the user's samples claimed by its own key and no other.
    attributability: float
    #: ``E||G_i(z) - G0(z)||`` at the same latents.
    l2_to_g0: float
    #: PSNR to ``G0`` at the same latents (dB; mean over finite values).
    psnr: float
    ssim: float
    #: Fréchet distance of the user's samples to the authentic test images.
    frechet: float


@dataclasses.dataclass(frozen=True)
class ConditionMetrics:
    """A family under one test condition: means (and worst users) over its user models."""

    distinguishability: float
    distinguishability_min: float
    #: ``genprov.eval.attributability`` of all users' samples together.
    attributability: float
    attributability_min: float
    #: Shares of the user samples attributed to none, to several keys, or to another user.
    user_samples_none: float
    user_samples_ambiguous: float
    user_samples_other_user: float
    #: Shares of authentic test images and of ``G0``'s samples attributed to nobody (should be 1).
    real_attributed_none: float
    g0_attributed_none: float
    l2_to_g0: float
    psnr: float
    ssim: float
    frechet: float
    #: Fréchet distance of ``G0``'s samples (the reference for ``frechet``).
    frechet_g0: float


@dataclasses.dataclass(frozen=True)
class ConditionEvaluation:
    """What :func:`~genprov.experiments.keyed.run.evaluate_family` measures under one condition
    (``results.json`` keeps the two apart: ``metrics`` and ``per_user``)."""

    metrics: ConditionMetrics
    per_user: tuple[UserMetrics, ...]


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """The plain family's keys: angles, data-dependent thresholds, norms and every family's key warnings."""

    #: (n_keys, n_keys) angles between the keys in degrees (4 decimals).
    angles_degrees: tuple[tuple[float, ...], ...]
    #: (n_keys, n_keys) threshold angles on the authentic training images (``None`` where undefined).
    threshold_angles_degrees: tuple[tuple[float | None, ...], ...]
    #: Largest threshold angle and smallest angle between two keys (``None`` with one key).
    max_threshold_angle: float | None
    min_angle: float | None
    key_norms: tuple[float, ...]
    #: Family name -> warnings of its key checks.
    warnings: Mapping[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class GoalCheck:
    """One of the paper's goals checked on this run: ``value >= threshold``."""

    #: E.g. ``"A >= 0.9 under blur after robust training"``.
    goal: str
    family: str
    condition: str
    #: ``"distinguishability"`` or ``"attributability"``.
    metric: str
    value: float
    threshold: float
    met: bool


@dataclasses.dataclass(frozen=True)
class KeyedResult(ExperimentResult):
    """Everything ``genprov reproduce keyed`` measured (``results.json``)."""

    experiment: str
    paper: str
    config: Mapping[str, Any]
    #: ``"clean"``, the post-processes, ``combination-mild``, then ``NAME@absolute`` / ``NAME@matched``.
    conditions: tuple[str, ...]
    #: Condition -> its test strengths in pixels (blur sigma, crop ratio, noise sigma, JPEG quality).
    test_strengths: Mapping[str, Mapping[str, float]]
    #: Family ("plain", "robust-<post-process>", the variants) -> condition -> its metrics.
    metrics: Mapping[str, Mapping[str, ConditionMetrics]]
    #: Family -> condition -> one row per user model.
    per_user: Mapping[str, Mapping[str, tuple[UserMetrics, ...]]]
    keys: KeyInfo
    #: The paper's goals (D, A >= 0.99 clean; A >= 0.9 under each post-process after robust training).
    goals: tuple[GoalCheck, ...]
    #: Family -> mean PSNR (dB) of its users' clean samples to the root model's at the same latents.
    psnr_to_root: Mapping[str, float]
    #: Family -> the ``members`` of its manifest (how each key and user model was trained).
    training: Mapping[str, Sequence[Mapping[str, Any]]]
    #: Phase -> seconds.
    timings_seconds: Mapping[str, float]
    #: Path of ``report.html``.
    report: str
