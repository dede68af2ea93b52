"""``genprov reproduce flipad-t2i``: presets, config checks, and a tiny run's typed result (run once per module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genprov.exceptions import ConfigError
from genprov.experiments.base import run_experiment
from genprov.experiments.flipad_t2i import METHODS, SOURCES, FlipadT2IExperimentConfig, FlipadT2IResult

pytest.importorskip("diffusers")

#: The quick preset made smaller still (seconds): every stage runs, nothing is measured seriously.
TINY: dict[str, Any] = {
    "data": "digits",
    "seed": 0,
    "quick": True,
    "pipeline": {"vae_steps": 4, "unet_steps": 4, "batch_size": 8},
    "other_vae_steps": 4,
    "n_pipeline_train": 40,
    "n_train": 12,
    "n_holdout": 6,
    "n_test": 8,
    "sample_steps": 2,
    "flipad": {"max_iter": 10, "n_anchor": 8},
    "detector": {"n_epochs": 2, "lr_milestones": [], "widths": [8], "batch_size": 16},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlipadT2IResult, Path]:
    out = tmp_path_factory.mktemp("flipad-t2i")
    result = run_experiment("flipad-t2i", TINY, out, show_progress=False)
    assert isinstance(result, FlipadT2IResult)
    return result, out


def test_presets_and_config_errors() -> None:
    full = FlipadT2IExperimentConfig.preset_for("digits")
    assert (full.image_size, full.pipeline, full.methods) == (32, {"vae_steps": 400, "unet_steps": 800}, METHODS)
    quick = FlipadT2IExperimentConfig.preset_for("digits", quick=True)
    assert quick.image_size == 16 and quick.flipad.max_iter == 100 and quick.flipad.saturation == "censor"
    for cfg in (full, quick):
        assert FlipadT2IExperimentConfig.from_dict(cfg.to_dict()) == cfg
    protocol = quick.protocol()
    assert (protocol.n_train, protocol.n_holdout, protocol.n_test, protocol.seed) == (60, 30, 40, 0)
    with pytest.raises(ConfigError, match="image_size"):
        FlipadT2IExperimentConfig.from_dict({"image_size": 18})
    with pytest.raises(ConfigError, match="methods"):
        FlipadT2IExperimentConfig.from_dict({"methods": ["aeroblades"]})


def test_result_fields_and_results_json(tiny: tuple[FlipadT2IResult, Path]) -> None:
    result, out = tiny
    saved = json.loads((out / "results.json").read_text())
    assert saved.pop("provenance")["command"].startswith("genprov reproduce flipad-t2i --data digits --seed 0 --quick")
    assert result.to_dict() == saved and (out / "report.html").is_file()
    assert [p.role for p in result.pipelines] == ["own", "other", "shared-vae"]
    own, other, shared = result.pipelines
    assert (own.seed, other.seed, shared.seed) == (0, 1, 2)
    assert shared.shares_own_vae and not other.shares_own_vae
    methods = {*METHODS, "aeroblade-l2"}
    assert set(result.table4) == methods and set(result.shared_vae) == methods
    for method in methods:
        table4 = result.table4[method]
        assert set(table4.per_source) == {SOURCES["real"], SOURCES["other"]}
        assert set(result.shared_vae[method].per_source) == {SOURCES["shared-vae"]}
        for metrics in (*table4.per_source.values(), table4.mean):
            assert 0.0 <= metrics.auc <= 1.0 and 0.0 <= metrics.acc <= 1.0
        assert result.headline[method] == table4.mean


def test_shared_vae_pipeline_reuses_the_own_vae_and_given_pipelines_are_used(
    tiny: tuple[FlipadT2IResult, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    result, _ = tiny
    own, other, shared = (Path(p.folder) for p in result.pipelines)
    weights = "vae/diffusion_pytorch_model.safetensors"
    assert load_file(own / weights).keys() == load_file(shared / weights).keys()
    assert all(bool((load_file(own / weights)[k] == v).all()) for k, v in load_file(shared / weights).items())
    assert any(bool((load_file(own / weights)[k] != v).any()) for k, v in load_file(other / weights).items())
    again = run_experiment(
        "flipad-t2i",
        {**TINY, "base_pipeline": str(own), "other_pipeline": str(other), "methods": ["aeroblade"]},
        tmp_path,
        show_progress=False,
    )
    assert isinstance(again, FlipadT2IResult)
    assert [(p.folder, p.seed) for p in again.pipelines[:2]] == [(str(own), None), (str(other), None)]
    with pytest.raises(ConfigError, match="image_size=16"):
        run_experiment("flipad-t2i", {**TINY, "base_pipeline": str(own), "image_size": 32}, tmp_path / "x")
