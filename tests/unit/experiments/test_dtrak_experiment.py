"""``genprov reproduce dtrak``: config presets (the LDS evaluation itself is tested in tests/unit/eval)."""

from __future__ import annotations

from genprov.experiments.dtrak import DTRAKExperimentConfig


def test_experiment_config_presets() -> None:
    quick = DTRAKExperimentConfig.from_dict({"quick": True, "n_train": 50})
    assert quick.preset == "tiny" and quick.n_train == 50 and quick.n_workers == 1
    full = DTRAKExperimentConfig.preset_for("digits")
    assert full.preset == "small" and full.n_subsets == 32
    assert DTRAKExperimentConfig.from_dict({"data": "mnist"}).image_size == 16
    assert DTRAKExperimentConfig.from_dict(full.to_dict()) == full
