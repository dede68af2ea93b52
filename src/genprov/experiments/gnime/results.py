"""The typed result of ``genprov reproduce gnime``; :meth:`GNIMEResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.eval.stats import MeanCI
from genprov.experiments.base import ExperimentResult, json_key

__all__ = [
    "AblationRow",
    "AttackRow",
    "Comparison",
    "DefenseOutcome",
    "Finding",
    "FindingRow",
    "GNIMEResult",
    "Metrics",
    "RndLevel",
    "SweepPoint",
]

#: An attack's metrics on the test split: metric name -> mean with its 95% interval (or a plain number).
Metrics = Mapping[str, MeanCI | float | list[float] | None]


@dataclasses.dataclass(frozen=True)
class AttackRow:
    """One row of the paper's table: an attack (against a defense) on the test split."""

    attack: str
    mse: MeanCI | None
    ssim: MeanCI | None
    psnr: MeanCI | None
    tca: MeanCI | None
    reclassification_accuracy: MeanCI | None
    feature_similarity: MeanCI | None
    #: MSE of defended vs clean maps (0 without a defense; ``None`` where no explanation is released).
    distortion: MeanCI | float | None
    #: Share of the clean map's top pixels kept (1 without a defense; ``None`` without explanations).
    top_overlap: MeanCI | float | None


@dataclasses.dataclass(frozen=True)
class DefenseOutcome:
    """A defense on the test split: its distortion and both attackers' metrics."""

    distortion: MeanCI
    top_overlap: MeanCI
    non_adaptive: Metrics = dataclasses.field(metadata=json_key("non-adaptive"))
    adaptive: Metrics
    #: What the adaptive attacker was (its ``describe()``).
    adaptive_attack: Mapping[str, Any]

    def against(self, threat: str) -> Metrics:
        """The attacker's metrics under ``threat`` ("non-adaptive" or "adaptive")."""
        return self.non_adaptive if threat == "non-adaptive" else self.adaptive


@dataclasses.dataclass(frozen=True)
class Comparison:
    """GNIME against its matched RND at one sweep point, for one threat model (positive = GNIME more private)."""

    mse_gain: MeanCI
    ssim_gain: MeanCI
    tca_gain: MeanCI
    #: The attacker's MSE is not below PredMI's (the paired interval of PredMI - attack reaches 0).
    gnime_at_floor: bool
    rnd_at_floor: bool
    #: Two-sided paired sign-flip p-value of the MSE gain (GNIME vs RND on the same test images).
    mse_p_value: float
    #: That p-value Holm-adjusted over the run's family (every sweep point x threat model; ablation apart).
    mse_p_holm: float


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """GNIME at weight ``a`` and the Gaussian noise (RND) of the same distortion on the defender's data."""

    a: float
    #: RND's distortion target: GNIME's distortion on the defender's data.
    matched_distortion_defender: float
    rnd_sigma: float
    gnime: DefenseOutcome
    rnd: DefenseOutcome
    #: Threat model ("non-adaptive", "adaptive") -> the paired comparison.
    comparison: Mapping[str, Comparison]
    #: GNIME's training losses per epoch (with the step count; see ``GNIMEDefense.history_``).
    gnime_history: list[dict[str, float]]
    #: The defender's map std GNIME standardised by (1 without standardisation): the distortion in the
    #: original's standardised units is the [0, 1] distortion / std**2.
    gnime_map_std: float


@dataclasses.dataclass(frozen=True)
class RndLevel:
    """RND at an extra noise level (``rnd_sigmas``)."""

    sigma: float
    rnd: DefenseOutcome = dataclasses.field(metadata=json_key(inline=True))


@dataclasses.dataclass(frozen=True)
class FindingRow:
    """One sweep point of the finding, for one threat model."""

    a: float
    distortion: float
    gnime_mse: float
    rnd_mse: float
    mse_gain: MeanCI
    tca_gain: MeanCI
    #: Holm-adjusted p-value of the MSE gain; the wins below need it under 0.05.
    p_holm: float
    gnime_wins_mse: bool
    rnd_wins_mse: bool
    gnime_wins_tca: bool
    gnime_at_floor: bool
    rnd_at_floor: bool


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One GNIME variant at the main weight beside its own matched RND (``ablation=true``)."""

    variant: str
    #: The variant's GNIME settings that differ between the variants (``GNIME_VARIANTS``) and its steps.
    settings: Mapping[str, Any]
    distortion: MeanCI
    gnime_map_std: float
    final_losses: Mapping[str, float]
    gnime: DefenseOutcome
    rnd: DefenseOutcome
    comparison: Mapping[str, Comparison]


@dataclasses.dataclass(frozen=True)
class Finding:
    """Where GNIME beats noise at equal distortion, per threat model, in numbers and in words."""

    adaptive: tuple[FindingRow, ...]
    non_adaptive: tuple[FindingRow, ...] = dataclasses.field(metadata=json_key("non-adaptive"))
    text: str


@dataclasses.dataclass(frozen=True)
class GNIMEResult(ExperimentResult):
    """Everything ``genprov reproduce gnime`` measured (``results.json``)."""

    experiment: str
    paper: str
    config: Mapping[str, Any]
    #: Split name -> number of images.
    splits: Mapping[str, int]
    image_size: int
    n_classes: int
    #: "victim" / "evaluator" -> accuracy on the test split.
    classifier_test_accuracy: Mapping[str, float]
    main_a: float
    #: "exp-mi" / "pred-mi" without a defense.
    baseline: Mapping[str, Metrics]
    #: Threat model -> the paper's table (ExpMI no defense, RND, GNIME, PredMI) at ``main_a``.
    table: Mapping[str, tuple[AttackRow, ...]]
    sweep: tuple[SweepPoint, ...]
    rnd_extra: tuple[RndLevel, ...]
    finding: Finding
    #: How the sweep's comparisons were corrected for multiplicity (test, family, level).
    multiplicity: Mapping[str, Any]
    #: The GNIME variants at ``main_a`` (empty unless ``ablation``).
    ablation: tuple[AblationRow, ...]
    #: "exp-mi" / "pred-mi" -> the clean attack's ``describe()``.
    attacks: Mapping[str, Mapping[str, Any]]
    timings_seconds: Mapping[str, float]
    #: Path of ``report.html``.
    report: str

    def row(self, threat: str, attack: str) -> AttackRow:
        """The paper-table row of ``attack`` ("ExpMI (no defense)", "RND", "GNIME", "PredMI") under ``threat``."""
        return next(r for r in self.table[threat] if r.attack == attack)
