"""The typed result of ``genprov reproduce flipad``; :meth:`FlipadResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.experiments.base import ExperimentResult, json_key

__all__ = [
    "AucAcc",
    "FlipadResult",
    "MethodSummary",
    "Resamples",
    "SourceMetrics",
    "StudyRow",
    "Summary",
    "WidthRow",
]


@dataclasses.dataclass(frozen=True)
class AucAcc:
    """AUC and accuracy at the 0.5% FNR threshold."""

    auc: float
    acc: float


@dataclasses.dataclass(frozen=True)
class SourceMetrics:
    """A method against one source: means and standard deviations over the resamples."""

    auc: float
    acc: float
    auc_sd: float
    acc_sd: float


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """One method for one owner: metrics per source (JSON: one key per source) and their ``"mean"``."""

    per_source: Mapping[str, SourceMetrics] = dataclasses.field(metadata=json_key(inline=True))
    mean: AucAcc


#: Method -> its summary for one owner (or perturbation, or tabular owner).
Summary = Mapping[str, MethodSummary]


@dataclasses.dataclass(frozen=True)
class Resamples:
    """A method against one source: AUC and accuracy of every resample."""

    auc: tuple[float, ...]
    acc: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One FLIPAD setting (or the raw-pixel reference) on the validation split."""

    setting: str
    #: Validation source -> AUC and accuracy (JSON: ``"AUC <source>"``, ``"acc <source>"``).
    per_source: Mapping[str, AucAcc]
    mean_auc: float
    mean_acc: float
    #: Whether the study chose this setting (``None`` in the width study, which chooses nothing).
    chosen: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as ``results.json`` and the report's table hold it."""
        row: dict[str, Any] = {"setting": self.setting}
        for source, m in self.per_source.items():
            row[f"AUC {source}"] = m.auc
            row[f"acc {source}"] = m.acc
        row["mean AUC"] = self.mean_auc
        row["mean acc"] = self.mean_acc
        if self.chosen is not None:
            row["chosen"] = self.chosen
        return row


@dataclasses.dataclass(frozen=True)
class WidthRow:
    """FLIPAD (chosen setting) or raw pixels on the validation split at another generator width."""

    width: int
    #: Under-determination of the last layer: ``4 * width / channels``.
    unknowns_per_output: int
    row: StudyRow

    def to_dict(self) -> dict[str, Any]:
        """The row as ``results.json`` and the report's table hold it."""
        return {"width": self.width, "unknowns per output": self.unknowns_per_output, **self.row.to_dict()}


@dataclasses.dataclass(frozen=True)
class FlipadResult(ExperimentResult):
    """Everything ``genprov reproduce flipad`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    #: The FLIPAD config of every table (the study's choice).
    flipad_config_used: Mapping[str, Any]
    study: tuple[StudyRow, ...]
    width_study: tuple[WidthRow, ...]
    #: Owner architecture -> summary against real test images and the other architectures.
    table1: Mapping[str, Summary]
    #: Owner -> method -> source -> every resample.
    table1_per_resample: Mapping[str, Mapping[str, Mapping[str, Resamples]]]
    #: Owner architecture -> summary against itself trained with other seeds.
    table2: Mapping[str, Summary]
    #: Perturbation -> summary of the first owner.
    table3: Mapping[str, Summary]
    #: Tabular dataset -> owner -> summary.
    table5: Mapping[str, Mapping[str, Summary]]
    #: Method -> Table 1 means over owners and sources.
    headline: Mapping[str, AucAcc]
    #: Table name -> method -> {"acc", "auc"} means.
    table_means: Mapping[str, Mapping[str, Mapping[str, float]]]
    #: Phase -> seconds.
    timings_s: Mapping[str, float]
