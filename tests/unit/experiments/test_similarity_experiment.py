"""``genprov reproduce similarity``: config validation, metric helpers, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genprov.eval.retrieval import mean_average_precision
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, run_experiment
from genprov.experiments.similarity import (
    SimilarityExperimentConfig,
    SimilarityResult,
    chance_level,
    retrieval_metrics,
    run_similarity,
)

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "data": "digits",
    "quick": True,
    "n_pool": 60,
    "train_steps": 4,
    "preset": "tiny",
    "batch_size": 8,
    "n_object": 6,
    "n_style": 2,
    "style_exemplars": 2,
    "finetune_steps": 2,
    "n_prior": 4,
    "n_samples": 3,
    "ddim_steps": 2,
    "n_control": 4,
    "classifier_steps": 4,
    "simclr_steps": 2,
    "extractors": ["pixels", "random-cnn", "simclr", "classifier"],
    "tuning": {"max_steps": 4, "eval_every": 2},
    "gallery_queries": 1,
}


def test_registered_with_its_config() -> None:
    assert EXPERIMENTS.config_type("similarity") is SimilarityExperimentConfig


def test_presets() -> None:
    full = SimilarityExperimentConfig.preset_for("digits")
    quick = SimilarityExperimentConfig.preset_for("digits", quick=True)
    mnist = SimilarityExperimentConfig.preset_for("mnist", seed=3)
    assert full.n_pool == 1000 and full.n_object == 24 and full.finetune_steps == 300 and not full.quick
    assert quick.quick and quick.n_pool < full.n_pool and quick.tuning["max_steps"] == 100
    assert mnist.image_size == 16 and mnist.preset == "base" and mnist.seed == 3
    assert SimilarityExperimentConfig.from_dict({"quick": True, "n_pool": 77}).n_pool == 77  # keys beat the preset
    assert SimilarityExperimentConfig.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": "cifar10"}, "data"),
        ({"extractors": ["pixel"]}, "extractors"),
        ({"extractors": ["local-weights"]}, "extractors"),
        ({"extractors": []}, "extractors"),
        ({"n_val_classes": 5}, "n_val_classes"),
        ({"n_pool": 0}, "n_pool"),
        ({"finetune_steps": 0}, "finetune_steps"),
        ({"styles": ["bold"]}, "styles"),
        ({"preset": "huge"}, "preset"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SimilarityExperimentConfig.from_dict(changes)


def test_unknown_tuning_key_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        SimilarityExperimentConfig.from_dict({"tuning": {"max_step": 3}})


def test_retrieval_metrics_on_a_hand_ranking() -> None:
    # ranking of query 0: items 3, 1, 0, 2, 4, ... ; positives {1, 2}: AP = (1/2 + 2/4) / 2 = 0.5
    scores = np.array([[0.7, 0.8, 0.5, 0.9, 0.1] + [0.0] * 5, [0.9, 0.0, 0.0, 0.0, 0.0] + [0.0] * 5])
    scores[1, 5:] = -1.0
    metrics = retrieval_metrics(scores, [np.array([1, 2]), np.array([0])])
    assert metrics["ap"].tolist() == [0.5, 1.0]
    assert metrics["recall@|E|"].tolist() == [0.5, 1.0]  # top-2 of query 0 holds one of its two positives
    assert metrics["recall@5"].tolist() == [1.0, 1.0]
    assert metrics["recall@100"].tolist() == [1.0, 1.0]  # cut-off above n_items counts as n_items


def test_chance_level_matches_theory() -> None:
    chance = chance_level(100, 1, n_draws=2000, seed=0)
    harmonic = sum(1 / r for r in range(1, 101)) / 100  # E[1/rank] for a uniform rank
    assert chance["recall@10"] == pytest.approx(0.1) and chance["recall@|E|"] == pytest.approx(0.01)
    assert chance["mAP"] == pytest.approx(harmonic, rel=0.1)
    assert chance_level(100, 1, seed=0) == chance_level(100, 1, seed=0)


def test_tiny_run_end_to_end_and_resume(tmp_path: Path, file_mtimes) -> None:
    config = SimilarityExperimentConfig.from_dict(TINY)
    result = run_similarity(config, tmp_path, show_progress=False)
    assert isinstance(result, SimilarityResult)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == result.to_dict()  # the typed result is exactly what results.json holds
    assert saved["experiment"] == "similarity" and saved["config"]["quick"] is True
    assert list(saved)[:4] == ["experiment", "config", "data", "benchmark"]
    assert set(saved["retrieval"][0]) == {"extractor", "features", "protocol", "split", "case", "queries"} | {
        "mAP",
        "recall@5",
        "recall@10",
        "recall@100",
        "recall@|E|",
    }
    html = (tmp_path / "report.html").read_text()
    for heading in ("Summary", "The customization benchmark", "Soft attribution", "Top-k with soft shares"):
        assert heading in html
    roles = result.benchmark.roles
    assert roles["tune"] >= 1 and roles["val"] >= 1 and roles["unseen"] >= 1
    assert set(result.tuning) == set(TINY["extractors"])
    rows = result.retrieval
    assert {r.protocol for r in rows} == {"A", "B"} and {r.features for r in rows} == {"untuned", "tuned"}
    for r in rows:
        m = r.metrics
        assert 0 <= m.mean_ap <= 1 and 0 <= m.recall_5 <= m.recall_10 <= m.recall_100 <= 1
    assert 0 < result.chance_unseen["A"].mean_ap < 1
    assert 0 <= result.influence_strength.exemplar_nn_rate <= 1
    for s in result.soft_attribution:
        assert s.after.nll > 0 and 0 <= s.after.remaining_influence <= 1
    claims = result.claims
    assert (
        set(claims.per_extractor) == set(TINY["extractors"]) and claims.chance_map == result.chance_unseen["A"].mean_ap
    )
    headline = result.retrieval_row("pixels", "tuned")
    assert (headline.split, headline.case, headline.protocol) == ("unseen", "all", "A")
    assert claims.per_extractor["pixels"].tuned_map == headline.metrics.mean_ap
    # a second run reuses the models, the benchmark and the features (nothing rewritten): same numbers
    cached = {**file_mtimes(tmp_path, "*.safetensors"), **file_mtimes(tmp_path, "*.npz")}
    assert any(name.startswith("features") for name in cached)
    again = run_experiment("similarity", TINY, tmp_path, show_progress=False)
    assert {**file_mtimes(tmp_path, "*.safetensors"), **file_mtimes(tmp_path, "*.npz")} == cached
    assert isinstance(again, SimilarityResult)
    assert again.retrieval == result.retrieval and again.soft_attribution == result.soft_attribution


def test_map_of_the_metrics_agrees_with_eval() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 30))
    positives = [np.array([0, 3]), np.array([5]), np.array([7, 8, 9]), np.array([29])]
    assert retrieval_metrics(scores, positives)["ap"].mean() == pytest.approx(mean_average_precision(scores, positives))
