"""``genprov reproduce dtrak-t2i``: presets, data checks, and the quick run's typed result (run once per module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genprov.exceptions import ConfigError, DataError
from genprov.experiments.base import run_experiment
from genprov.experiments.dtrak_t2i import PAPER_ARTBENCH2, DTRAKT2IExperimentConfig, DTRAKT2IResult
from genprov.experiments.dtrak_t2i.run import load_t2i_data


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[DTRAKT2IResult, Path]:
    out = tmp_path_factory.mktemp("dtrak-t2i")
    result = run_experiment("dtrak-t2i", {"data": "digits", "seed": 0, "quick": True}, out, show_progress=False)
    assert isinstance(result, DTRAKT2IResult)
    return result, out


def test_presets() -> None:
    digits = DTRAKT2IExperimentConfig.preset_for("digits")
    assert digits.image_size == 16 and digits.lora_classes == ("0", "1") and digits.base["unet_steps"] == 1500
    cifar = DTRAKT2IExperimentConfig.preset_for("cifar10")
    assert cifar.image_size == 32 and cifar.lora_classes == ("automobile", "horse") and cifar.base["unet_steps"] == 1500
    assert (cifar.n_timesteps, cifar.study, cifar.projector) == (10, ({"n_timesteps": 100},), "sjlt")
    quick = DTRAKT2IExperimentConfig.preset_for("cifar10", quick=True)
    assert quick.lora_classes == ("automobile", "horse") and (quick.n_subsets, quick.n_seeds) == (4, 2)
    for cfg in (digits, cifar, quick):
        assert DTRAKT2IExperimentConfig.from_dict(cfg.to_dict()) == cfg
    lora = cifar.lora_config(200, seed=3)
    assert (lora.steps, lora.rank, lora.lr, lora.weight_decay, lora.seed) == (260, 8, 3e-4, 1e-6, 3)
    assert cifar.lora_config(100, seed=3).steps == 140  # a half subset: the same epochs


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="lora_classes"):
        DTRAKT2IExperimentConfig.from_dict({"lora_classes": ["horse", "horse"]})
    with pytest.raises(ConfigError, match="subset_fraction"):
        DTRAKT2IExperimentConfig.from_dict({"subset_fraction": 1.5})
    with pytest.raises(ConfigError, match="n_timestep"):
        DTRAKT2IExperimentConfig.from_dict({"study": [{"n_timestep": 100}]})


def test_data_split_into_base_lora_and_real_queries() -> None:
    cfg = DTRAKT2IExperimentConfig.preset_for("digits", quick=True)
    data = load_t2i_data(cfg)
    assert data.names == ("0", "1") and data.prompts == ("a handwritten zero", "a handwritten one")
    assert len(data.base) == cfg.n_base and len(data.train) == cfg.n_train and len(data.real) == cfg.n_real_queries
    assert data.train.labels is not None and sorted(np.bincount(data.train.labels.numpy()).tolist())[-2:] == [20, 20]
    assert set(data.captions) == set(data.prompts) and set(data.real_prompts) == set(data.prompts)
    assert not {"a handwritten zero", "a handwritten one"} & set(data.base_captions)
    by_index = load_t2i_data(cfg.replace(lora_classes=(0, 1)))
    assert by_index.names == data.names and by_index.train.fingerprint() == data.train.fingerprint()


def test_data_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'cat' is not a class"):
        load_t2i_data(DTRAKT2IExperimentConfig.preset_for("digits", quick=True, lora_classes=("0", "cat")))
    with pytest.raises(DataError, match="n_train=400"):
        load_t2i_data(DTRAKT2IExperimentConfig.preset_for("digits", quick=True, n_train=400))
    two = tmp_path / "two.npz"
    rng = np.random.default_rng(0)
    np.savez(two, x=rng.integers(0, 255, (40, 16, 16), dtype=np.uint8), y=np.arange(40) % 2)
    with pytest.raises(DataError, match="at least 3"):
        load_t2i_data(DTRAKT2IExperimentConfig.preset_for(str(two), quick=True, lora_classes=(0, 1)))


def test_quick_run_result_fields(quick: tuple[DTRAKT2IResult, Path]) -> None:
    result, out = quick
    saved = json.loads((out / "results.json").read_text())
    assert saved.pop("provenance")["command"] == "genprov reproduce dtrak-t2i --data digits --seed 0 --quick"
    assert saved == result.to_dict()
    assert result.experiment == "dtrak-t2i" and result.config["quick"] is True
    assert result.data.lora_classes == ("0", "1") and result.data.n_train == 40
    assert result.data.n_real_queries == 8 and result.data.n_gen_queries == 8
    assert 0 < result.model.lora_params < result.model.unet_params and result.model.lora_steps == 20
    for kind in ("real", "generated"):
        methods = result.lds.methods[kind]
        assert set(methods) == {"TRAK", "D-TRAK", "pixel similarity", "latent similarity"}
        for row in methods.values():
            assert -1 <= row.lds.mean <= 1 and row.lds.low <= row.lds.high
        assert methods["D-TRAK"].relative_damping is not None and methods["pixel similarity"].relative_damping is None
        assert "D-TRAK - TRAK" in result.lds.paired[kind] and result.lds.noise_ceiling[kind] is not None
        assert set(result.claim[kind]) == set(result.lds.paired[kind])
    paper = {(row.timesteps, row.method): row for row in result.paper}
    assert {k: {m: paper[(k, m)].paper_lds for m in v} for k, v in PAPER_ARTBENCH2.items()} == PAPER_ARTBENCH2
    assert paper[(10, "D-TRAK")].lds_real == result.lds.methods["real"]["D-TRAK"].lds.mean
    assert paper[(100, "TRAK")].lds_real is None  # the quick study measures K = 20, not 100
    assert {row.setting for row in result.variant_study} == {"n_timesteps=20"}
    assert set(result.featurization_seconds) == {"TRAK", "D-TRAK"}
    assert set(result.timings_seconds) == {
        "base pipeline",
        "LoRA + samples",
        "features + scores",
        "LDS LoRAs",
        "LDS evaluation + study",
    }


def test_quick_run_writes_its_benchmark_and_report(quick: tuple[DTRAKT2IResult, Path]) -> None:
    result, out = quick
    with np.load(out / "lds_benchmark.npz") as bench:
        assert bench["masks"].shape == (4, 40) and bench["losses"].shape == (4, 2, 16)
        assert bench["queries"].shape == (16, 4, 4, 4)  # the queries' latents
    assert result.benchmark == str(out / "lds_benchmark.npz")
    assert sorted(p.name for p in (out / "lora").iterdir())[:2] == ["full", "subset-000-seed-0"]
    html = (out / "report.html").read_text()
    for text in ("Linear datamodeling score", "Top influencers of generated images", "a handwritten zero", "0.279"):
        assert text in html
