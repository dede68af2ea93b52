"""The typed result of ``genprov reproduce dtrak``; :meth:`DTRAKResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.eval.stats import MeanCI
from genprov.experiments.base import ExperimentResult, json_key

__all__ = [
    "BenchmarkSizeRow",
    "ChosenSetting",
    "CounterfactualMetrics",
    "CounterfactualResult",
    "DTRAKResult",
    "DataInfo",
    "LDSResult",
    "LDSRow",
    "LambdaSweep",
    "ModelInfo",
    "TrainingCurve",
    "VariantLDSRow",
    "VariantPairedRow",
]


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """The training set the model and the benchmark use."""

    name: str
    n_train: int
    image_size: int
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The DDPM every method attributes."""

    preset: str
    n_params: int


@dataclasses.dataclass(frozen=True)
class LDSRow:
    """One method on one query kind's test queries, at the lambda chosen on its validation queries."""

    #: Mean LDS over test queries with its 95% bootstrap interval over queries.
    lds: MeanCI
    #: 95% bootstrap interval of the mean LDS over subsets.
    ci_over_subsets: tuple[float, float]
    #: Mean LDS of the validation queries at the chosen lambda.
    val_lds: float
    #: Index of the chosen lambda in the sweep (0 for methods without one).
    lambda_index: int
    #: The chosen lambda relative to ``trace(Phi^T Phi) / k`` (``None`` for methods without a lambda).
    relative_damping: float | None


@dataclasses.dataclass(frozen=True)
class LambdaSweep:
    """Mean LDS of validation and test queries at every lambda of the grid."""

    relative_damping: tuple[float, ...]
    val: tuple[float, ...]
    test: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class LDSResult:
    """The LDS evaluation (:func:`genprov.eval.lds.evaluate_lds`), per query kind (``"real"``, ``"generated"``)."""

    #: Kind -> method -> its row.
    methods: Mapping[str, Mapping[str, LDSRow]]
    #: Kind -> ``"A - B"`` -> paired difference of per-query LDS.
    paired: Mapping[str, Mapping[str, MeanCI]]
    #: Kind -> the LDS one training seed's losses reach against another's (``None`` with one seed).
    noise_ceiling: Mapping[str, MeanCI | None]
    #: Kind -> method -> its lambda sweep (methods with a lambda only).
    sweep: Mapping[str, Mapping[str, LambdaSweep]]

    def chosen_index(self, method: str) -> int:
        """Index of ``method``'s lambda chosen on the generated validation queries (else the real ones; 0
        when neither scored it)."""
        for kind in ("generated", "real"):
            row = self.methods.get(kind, {}).get(method)
            if row is not None:
                return row.lambda_index
        return 0

    @classmethod
    def from_evaluation(cls, ev: Mapping[str, Any]) -> LDSResult:
        """The typed form of :func:`~genprov.eval.lds.evaluate_lds`'s dict."""
        return cls(
            methods={
                kind: {
                    method: LDSRow(
                        lds=MeanCI(**r["lds"]),
                        ci_over_subsets=(float(r["ci_over_subsets"][0]), float(r["ci_over_subsets"][1])),
                        val_lds=r["val_lds"],
                        lambda_index=r["lambda_index"],
                        relative_damping=r["relative_damping"],
                    )
                    for method, r in rows.items()
                }
                for kind, rows in ev["methods"].items()
            },
            paired={kind: {name: MeanCI(**ci) for name, ci in pairs.items()} for kind, pairs in ev["paired"].items()},
            noise_ceiling={kind: None if c is None else MeanCI(**c) for kind, c in ev["noise_ceiling"].items()},
            sweep={
                kind: {
                    method: LambdaSweep(tuple(s["relative_damping"]), tuple(s["val"]), tuple(s["test"]))
                    for method, s in curves.items()
                }
                for kind, curves in ev["sweep"].items()
            },
        )


@dataclasses.dataclass(frozen=True)
class CounterfactualMetrics:
    """How far the regenerated images moved after retraining without one method's removals."""

    pixel_l2: MeanCI
    feature_cosine: MeanCI
    per_query_l2: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class CounterfactualResult:
    """Counterfactual retraining (``n_queries == 0``: not run; JSON ``{"n_queries": 0}``)."""

    n_queries: int
    k_removed: int = 0
    #: ``"TRAK"``, ``"D-TRAK"``, ``"random"`` -> metrics.
    methods: Mapping[str, CounterfactualMetrics] = dataclasses.field(default_factory=dict)
    #: Column titles of the report's image grid (original, then each removal).
    columns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The object ``results.json`` holds under ``"counterfactual"``."""
        if not self.n_queries:
            return {"n_queries": 0}
        return {
            "n_queries": self.n_queries,
            "k_removed": self.k_removed,
            "methods": dict(self.methods),
            "columns": list(self.columns),
        }


@dataclasses.dataclass(frozen=True)
class BenchmarkSizeRow:
    """Mean test LDS with only the first ``subsets`` subsets and ``seeds`` seeds of the benchmark."""

    subsets: int
    seeds: int
    #: ``"<kind> <method>"`` and ``"<kind> ceiling"`` -> mean LDS (JSON: keys of the row itself).
    mean_lds: Mapping[str, float | None] = dataclasses.field(metadata=json_key(inline=True))


@dataclasses.dataclass(frozen=True)
class TrainingCurve:
    """The main DDPM's training loss (mean per log interval) and whether it plateaued."""

    steps: tuple[int, ...]
    loss: tuple[float, ...]
    #: Relative drop of the mean loss from the second-to-last tenth of the log to the last tenth.
    last_tenth_drop: float
    #: Whether that drop is within ``genprov.experiments.dtrak.run.PLATEAU_TOLERANCE``.
    plateau: bool


@dataclasses.dataclass(frozen=True)
class ChosenSetting:
    """The feature setting (K, k, projector, noise) a method would use, chosen on the validation queries."""

    #: ``"base"`` or a study setting, e.g. ``"n_timesteps=50"``.
    setting: str
    #: Its validation LDS (at its validation-chosen lambda).
    val_lds: float
    #: Its LDS on the test queries.
    lds: MeanCI


@dataclasses.dataclass(frozen=True)
class VariantLDSRow:
    """TRAK or D-TRAK with one feature setting of the study, on the same benchmark.

    Every setting's test LDS is shown; picking the best of them by these numbers would be post hoc (chosen on
    test): :attr:`DTRAKResult.chosen_on_validation` is the pick made on the validation queries.
    """

    #: The ``TRAKConfig`` changes, e.g. ``"proj_dim=4096"``.
    setting: str
    method: str
    featurize_seconds: float
    #: Query kind -> LDS on its test queries (JSON: ``"LDS <kind>"``).
    lds: Mapping[str, MeanCI]
    #: Query kind -> LDS on its validation queries (JSON: ``"val LDS <kind>"``).
    val_lds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Mean cosine between the training features of distinct examples (noise coupling shows here).
    unrelated_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as ``results.json`` and the report's table hold it."""
        row: dict[str, Any] = {
            "setting": self.setting,
            "method": self.method,
            "featurize seconds": self.featurize_seconds,
        }
        row.update({f"LDS {kind}": ci for kind, ci in self.lds.items()})
        row.update({f"val LDS {kind}": value for kind, value in self.val_lds.items()})
        if self.unrelated_cosine is not None:
            row["unrelated feature cosine"] = self.unrelated_cosine
        return row


@dataclasses.dataclass(frozen=True)
class VariantPairedRow:
    """A paired difference of per-query LDS under one feature setting of the study."""

    setting: str
    #: ``"<A> - <B> (<kind>)"``.
    method: str
    paired_difference: MeanCI = dataclasses.field(metadata=json_key("paired difference"))


@dataclasses.dataclass(frozen=True)
class DTRAKResult(ExperimentResult):
    """Everything ``genprov reproduce dtrak`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    data: DataInfo
    model: ModelInfo
    lds: LDSResult
    counterfactual: CounterfactualResult
    #: ``"TRAK"`` / ``"D-TRAK"`` -> seconds to featurize the training set and the queries.
    featurization_seconds: Mapping[str, float]
    #: The main model's loss curve.
    training: TrainingCurve
    #: ``"TRAK"`` / ``"D-TRAK"`` -> mean cosine between the training features of distinct examples.
    unrelated_feature_cosine: Mapping[str, float]
    #: Kind -> method -> the feature setting chosen on the validation queries (``"base"`` or a study row's).
    chosen_on_validation: Mapping[str, Mapping[str, ChosenSetting]]
    #: Kind -> ``"A - B"`` -> whether the paired 95% interval lies above 0.
    claim: Mapping[str, Mapping[str, bool]]
    lds_vs_benchmark_size: tuple[BenchmarkSizeRow, ...]
    variant_study: tuple[VariantLDSRow | VariantPairedRow, ...]
    timings_seconds: Mapping[str, float]
    #: Path of ``lds_benchmark.npz``.
    benchmark: str
