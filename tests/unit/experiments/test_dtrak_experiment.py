"""``genprov reproduce dtrak``: config presets and the typed result (the LDS evaluation itself is tested in
tests/unit/eval)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from genprov.attribution.data.trak import unrelated_feature_cosine
from genprov.eval.lds import LDSBenchmark, evaluate_lds
from genprov.eval.stats import MeanCI
from genprov.exceptions import ConfigError
from genprov.experiments.dtrak import DTRAKExperimentConfig
from genprov.experiments.dtrak.config import train_config_values
from genprov.experiments.dtrak.results import (
    BenchmarkSizeRow,
    ChosenSetting,
    CounterfactualMetrics,
    CounterfactualResult,
    DataInfo,
    DTRAKResult,
    LDSResult,
    ModelInfo,
    TrainingCurve,
    VariantLDSRow,
    VariantPairedRow,
)
from genprov.experiments.dtrak.run import _choose_on_validation, _loss_curve, _recipe_tag
from genprov.models.train_config import TrainConfig
from genprov.utils.io import json_safe


def test_experiment_config_presets() -> None:
    quick = DTRAKExperimentConfig.from_dict({"quick": True, "n_train": 50})
    assert quick.preset == "tiny" and quick.n_train == 50 and quick.n_workers == 1
    full = DTRAKExperimentConfig.preset_for("digits")
    assert full.preset == "small" and (full.n_subsets, full.n_seeds, full.eval_draws) == (64, 3, 1000)
    assert full.train_recipe == "d-trak" and full.featurize_weights == "trained" and full.train_steps is None
    mnist = DTRAKExperimentConfig.from_dict({"data": "mnist"})
    assert (mnist.image_size, mnist.n_train) == (28, 1000)
    assert DTRAKExperimentConfig.from_dict({"data": "cifar2"}).image_size == 32
    assert DTRAKExperimentConfig.from_dict(full.to_dict()) == full


def test_budgets_sit_between_the_data_preset_and_the_keys_given() -> None:
    reduced = DTRAKExperimentConfig.from_dict({"budget": "reduced"})
    assert (reduced.n_subsets, reduced.n_seeds, reduced.train_epochs, reduced.eval_draws) == (32, 2, 100, 200)
    assert DTRAKExperimentConfig.from_dict({"budget": "reduced", "n_subsets": 8}).n_subsets == 8
    large = DTRAKExperimentConfig.from_dict({"budget": "reduced", "data": "cifar2"})
    assert large.n_subsets == 16 and large.study == ({"noise": "batch-position"},)
    assert DTRAKExperimentConfig.from_dict({"budget": "reduced", "quick": True}).n_subsets == 8  # quick wins
    assert DTRAKExperimentConfig.from_dict(reduced.to_dict()) == reduced
    with pytest.raises(ConfigError, match="budget"):
        DTRAKExperimentConfig.from_dict({"budget": "huge"})


def test_every_model_trains_the_same_epochs_with_the_original_recipe() -> None:
    cfg = DTRAKExperimentConfig(train_epochs=10, batch_size=32)
    full, half = train_config_values(cfg, 400, 0), train_config_values(cfg, 200, 1)
    assert (full["n_steps"], half["n_steps"]) == (130, 70)  # ceil(400 / 32) and ceil(200 / 32) steps per epoch
    assert full["lr"] == 1e-4 and full["lr_schedule"] == "cosine" and full["grad_clip"] == 1.0
    assert full["ema_decay"] is None and full["weight_decay"] == 1e-6
    earlier = cfg.replace(train_recipe="genprov-v1", train_steps=600, featurize_weights="ema")
    old = train_config_values(earlier, 200, 0)
    assert old["n_steps"] == 600 and old["lr"] == 1e-3 and old["ema_decay"] == 0.995
    TrainConfig(**full)  # valid training configs
    with pytest.raises(ConfigError, match="counterfactual_queries"):
        DTRAKExperimentConfig(n_gen_queries=4, counterfactual_queries=3)  # only 2 generated test queries


def test_loss_curve_plateau_and_the_validation_choice() -> None:
    flat = _loss_curve([{"step": s, "loss": 1.0 + (1.0 if s < 5 else 0.0)} for s in range(20)])
    assert flat.plateau and flat.steps[-1] == 19
    falling = _loss_curve([{"step": s, "loss": 1.0 / (1 + s)} for s in range(20)])
    assert not falling.plateau and falling.last_tenth_drop > 0.02
    ev, _ = _evaluation()
    base = LDSResult.from_evaluation(ev)
    rows = {
        kind: {m: dataclasses.replace(r, val_lds=r.val_lds + 1) for m, r in per.items()}
        for kind, per in base.methods.items()
    }
    better = dataclasses.replace(base, methods=rows)
    chosen = _choose_on_validation({"base": base, "n_timesteps=50": better})
    assert chosen["real"]["TRAK"].setting == "n_timesteps=50"
    assert chosen["real"]["TRAK"].lds == better.methods["real"]["TRAK"].lds
    assert _choose_on_validation({"base": better, "k": base})["generated"]["D-TRAK"].setting == "base"


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
        training=TrainingCurve(steps=(1, 2), loss=(0.5, 0.4), last_tenth_drop=0.2, plateau=False),
        unrelated_feature_cosine={"TRAK": 0.001, "D-TRAK": 0.002},
        chosen_on_validation={"real": {"TRAK": ChosenSetting("base", 0.2, MeanCI(0.1, 0, 0.2, 3))}},
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
        "training",
        "unrelated_feature_cosine",
        "chosen_on_validation",
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


def test_unrelated_feature_cosine_sees_shared_noise() -> None:
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(50, 64))
    shared = independent + 2 * rng.normal(size=(1, 64))  # a common component, as shared noise adds
    assert abs(unrelated_feature_cosine(independent)) < 0.05 < unrelated_feature_cosine(shared)


def test_the_earlier_recipe_reuses_the_earlier_cache_folders() -> None:
    earlier = DTRAKExperimentConfig(train_recipe="genprov-v1", featurize_weights="ema", train_steps=600)
    assert _recipe_tag(earlier) == ""  # models/ and stores/ themselves, where the earlier runs cached them
    assert _recipe_tag(DTRAKExperimentConfig()) == "d-trak-trained-e200-b32"
