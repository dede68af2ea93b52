"""``genprov reproduce dtrak``: config presets and the typed result (the LDS evaluation itself is tested in
tests/unit/eval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genprov.eval.lds import LDSBenchmark, evaluate_lds
from genprov.eval.stats import MeanCI
from genprov.experiments.dtrak import DTRAKExperimentConfig
from genprov.experiments.dtrak.results import (
    BenchmarkSizeRow,
    CounterfactualMetrics,
    CounterfactualResult,
    DataInfo,
    DTRAKResult,
    LDSResult,
    ModelInfo,
    VariantLDSRow,
    VariantPairedRow,
)
from genprov.utils.io import json_safe


def test_experiment_config_presets() -> None:
    quick = DTRAKExperimentConfig.from_dict({"quick": True, "n_train": 50})
    assert quick.preset == "tiny" and quick.n_train == 50 and quick.n_workers == 1
    full = DTRAKExperimentConfig.preset_for("digits")
    assert full.preset == "small" and full.n_subsets == 32
    assert DTRAKExperimentConfig.from_dict({"data": "mnist"}).image_size == 16
    assert DTRAKExperimentConfig.from_dict(full.to_dict()) == full


def _evaluation() -> tuple[dict, np.ndarray]:
    """A real ``evaluate_lds`` output on a synthetic benchmark, and the scores it measured."""
    rng = np.random.default_rng(0)
    n_subsets, n_train, n_q = 8, 12, 12
    masks = rng.random((n_subsets, n_train)) < 0.5
    losses = rng.random((n_subsets, 2, n_q))
    kinds = np.array(["real"] * 6 + ["generated"] * 6)
    bench = LDSBenchmark(masks, losses, np.zeros((n_q, 1, 2, 2)), kinds, np.zeros(n_q, dtype=bool))
    bench = bench.with_validation_split(0)
    scores = {
        "TRAK": rng.normal(size=(3, n_q, n_train)),
        "D-TRAK": rng.normal(size=(3, n_q, n_train)),
        "pixel similarity": rng.normal(size=(1, n_q, n_train)),
    }
    ev = evaluate_lds(scores, bench, dampings=(0.1, 1.0, 10.0), seed=0, n_boot=20)
    return ev, scores["D-TRAK"]


def _result(lds: LDSResult, counterfactual: CounterfactualResult) -> DTRAKResult:
    return DTRAKResult(
        experiment="dtrak",
        config=DTRAKExperimentConfig(quick=True).to_dict(),
        data=DataInfo(name="digits", n_train=12, image_size=8, fingerprint="abc"),
        model=ModelInfo(preset="tiny", n_params=10),
        lds=lds,
        counterfactual=counterfactual,
        featurization_seconds={"TRAK": 1.0, "D-TRAK": 2.0},
        claim={"real": {"D-TRAK - TRAK": True}},
        lds_vs_benchmark_size=(
            BenchmarkSizeRow(subsets=8, seeds=1, mean_lds={"real TRAK": 0.1, "real ceiling": None}),
        ),
        variant_study=(
            VariantLDSRow(
                setting="proj_dim=64", method="TRAK", featurize_seconds=0.5, lds={"real": MeanCI(0.1, 0, 0.2, 3)}
            ),
            VariantPairedRow(
                setting="proj_dim=64", method="D-TRAK - TRAK (real)", paired_difference=MeanCI(0.0, -1, 1, 3)
            ),
        ),
        timings_seconds={"total": 3.0},
        benchmark="out/lds_benchmark.npz",
    )


def test_typed_lds_serialises_to_the_evaluation_and_chooses_lambda_on_generated_queries() -> None:
    ev, dtrak_scores = _evaluation()
    lds = LDSResult.from_evaluation(ev)
    result = _result(lds, CounterfactualResult(n_queries=0))
    assert result.to_dict()["lds"] == json_safe(ev)  # every field, sweeps and intervals included
    row = lds.methods["generated"]["D-TRAK"]
    assert row.relative_damping == (0.1, 1.0, 10.0)[row.lambda_index]
    assert lds.chosen_index("D-TRAK") == row.lambda_index and lds.chosen_index("unscored") == 0
    assert lds.methods["real"]["pixel similarity"].relative_damping is None
    assert set(lds.sweep["real"]) == {"TRAK", "D-TRAK"}  # methods with a lambda only
    assert dtrak_scores[lds.chosen_index("D-TRAK")].shape == (12, 12)


def test_result_json_keys_order_and_row_shapes(tmp_path: Path) -> None:
    ev, _ = _evaluation()
    cf = CounterfactualResult(
        n_queries=1,
        k_removed=3,
        methods={"TRAK": CounterfactualMetrics(MeanCI(1.0, 0.5, 1.5, 1), MeanCI(0.9, 0.8, 1.0, 1), (1.0,))},
        columns=("original", "without top-3 TRAK"),
    )
    result = _result(LDSResult.from_evaluation(ev), cf)
    result.write_json(tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == result.to_dict()
    assert list(saved) == [
        "experiment",
        "config",
        "data",
        "model",
        "lds",
        "counterfactual",
        "featurization_seconds",
        "claim",
        "lds_vs_benchmark_size",
        "variant_study",
        "timings_seconds",
        "benchmark",
    ]
    assert saved["counterfactual"]["methods"]["TRAK"]["pixel_l2"]["mean"] == 1.0
    assert list(saved["counterfactual"]) == ["n_queries", "k_removed", "methods", "columns"]
    assert saved["lds_vs_benchmark_size"] == [{"subsets": 8, "seeds": 1, "real TRAK": 0.1, "real ceiling": None}]
    lds_row, paired_row = saved["variant_study"]
    assert list(lds_row) == ["setting", "method", "featurize seconds", "LDS real"] and lds_row["LDS real"]["n"] == 3
    assert list(paired_row) == ["setting", "method", "paired difference"]
    assert _result(result.lds, CounterfactualResult(n_queries=0)).to_dict()["counterfactual"] == {"n_queries": 0}
