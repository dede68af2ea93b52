"""``genprov reproduce keyed``: config presets and validation, a tiny end-to-end run whose typed result is
``results.json``, its cache, and the demo's keyed section on a tiny root generator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch

from genprov.data import load_dataset
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, run_experiment
from genprov.experiments.flipad import FlipadExperimentConfig
from genprov.experiments.keyed import (
    VARIANTS,
    ConditionMetrics,
    KeyedExperimentConfig,
    KeyedResult,
    UserMetrics,
    keyed_section,
)
from genprov.experiments.quickstart import DemoConfig, DemoContext
from genprov.experiments.readme import README_TABLES
from genprov.models.checkpoints import save_checkpoint
from genprov.models.gans import GANConfig, Generator

torch.set_num_threads(1)

#: Seconds on 2 CPU cores: two keys, a few dozen steps, 20 evaluation samples, every condition and variant.
TINY: dict[str, Any] = {
    "data": "digits",
    "seed": 0,
    "quick": True,
    "n_keys": 2,
    "gan_steps": 30,
    "gan_width": 8,
    "latent_dim": 8,
    "classifier_steps": 20,
    "n_gan_train": 300,
    "family": {"user_steps": 20, "robust_steps": 10, "key_steps": 50, "n_compliance": 100, "batch_size": 16},
    "n_eval": 20,
    "n_real_eval": 20,
    "n_grid": 4,
}
RESULT_KEYS = ["experiment", "paper", "config", "conditions", "test_strengths", "metrics", "per_user", "keys"]
RESULT_KEYS += ["goals", "psnr_to_root", "training", "timings_seconds", "report"]


def test_presets_merge_family_settings() -> None:
    assert "keyed" in EXPERIMENTS.names()
    cfg = KeyedExperimentConfig.from_dict({"quick": True, "family": {"alpha": 5.0}})
    assert cfg.n_keys == 3 and cfg.family.user_steps == 600 and cfg.family.alpha == 5.0
    assert cfg.family.robust_steps == 300 and cfg.n_eval == 300
    full = KeyedExperimentConfig.from_dict({})
    assert full.n_keys == 10 and full.n_gan_train is None and full.variants == VARIANTS
    # the original's combination test: all four steps at test strength; blur scaled from 64 px to 16 px
    assert cfg.condition_strengths("combination") == {"blur": 0.75, "crop": 0.8, "noise": 0.1, "jpeg": 80.0}
    assert cfg.condition_strengths("combination-mild") == {"blur": 1.0, "crop": 0.9, "noise": 0.1, "jpeg": 80.0}
    assert cfg.condition_strengths("blur") == {"blur": 0.75} and cfg.condition_strengths("blur@absolute") == {
        "blur": 3.0
    }
    assert cfg.condition_strengths("jpeg") == {"jpeg": 80.0}
    assert KeyedExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_earlier_protocol_is_one_switch_and_explicit_keys_win() -> None:
    earlier = KeyedExperimentConfig.from_dict({"protocol": "genprov-v1", "family": {"robust_lr": 1e-3}})
    assert earlier.strengths == "absolute" and earlier.family.robust_steps == 1000
    assert earlier.family.robust_batch_size == 64 and earlier.family.robust_lr == 1e-3  # given key wins
    assert earlier.family.post_process.blur_kernel == "capped-9" and earlier.family.post_process.blur_sigma == (
        0.5,
        3.0,
    )
    original = KeyedExperimentConfig.from_dict({})
    assert original.strengths == "matched" and original.family.robust_steps == 37_500


def test_strengths_match_the_resolution() -> None:
    matched = KeyedExperimentConfig.from_dict({"data": "mnist", "image_size": 32})
    assert matched.side == 32 and matched.condition_strengths("blur") == {"blur": 1.5}
    assert matched.family_config().post_process.reference_size == 64
    assert matched.test_conditions() == (
        "clean",
        *("blur", "crop", "noise", "jpeg", "combination", "combination-mild"),
        *("blur@absolute", "combination@absolute"),
    )
    absolute = matched.replace(strengths="absolute")
    assert absolute.condition_strengths("blur") == {"blur": 3.0}
    assert absolute.condition_strengths("blur@matched") == {"blur": 1.5}
    assert absolute.family_config().post_process.reference_size is None
    at_reference = matched.replace(image_size=64)
    assert at_reference.test_conditions()[-1] == "combination-mild"  # nothing differs at 64 px


def test_gan_reproductions_share_the_data_preset() -> None:
    # keyed and FLIPAD take their non-digits and quick presets from one helper
    for config in (KeyedExperimentConfig, FlipadExperimentConfig):
        assert config.from_dict({"data": "mnist"}).n_gan_train == 10_000
        assert config.from_dict({"data": "mnist", "n_gan_train": 500}).n_gan_train == 500
        assert config.from_dict({}).n_gan_train is None
    assert FlipadExperimentConfig.from_dict({"quick": True}).gan_steps == 300
    assert KeyedExperimentConfig.from_dict({"quick": True}).gan_steps == 1000


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"n_keys": 0}, "n_keys"),
        ({"gan_steps": True}, "gan_steps"),
        ({"n_eval": 1}, "n_eval"),
        ({"n_real_eval": 1.5}, "n_real_eval"),
        ({"variants": ["nope"]}, "variants"),
        ({"post_processes": ["blurr"]}, "blur"),
        ({"test_jpeg_quality": 100}, "test_jpeg_quality"),
        ({"test_crop_ratio": 0}, "test_crop_ratio"),
        ({"test_noise_sigma": -0.1}, "test strengths"),
        ({"seed": -1}, "seed"),
        ({"image_size": 20}, "image_size"),
        ({"strengths": "relative"}, "strengths"),
        ({"protocol": "paper"}, "protocol"),
    ],
)
def test_invalid_configs_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        KeyedExperimentConfig.from_dict(values)


@pytest.mark.filterwarnings("ignore::genprov.attribution.model.keyed.KeyConstraintWarning")
def test_tiny_run_on_a_path_without_a_test_split(tmp_path: Path) -> None:
    digits = load_dataset("digits", n=500, seed=0)
    images = ((digits.images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    np.savez(tmp_path / "mine.npz", x=images, y=digits.labels.numpy())
    config = {**TINY, "data": str(tmp_path / "mine.npz"), "variants": [], "post_processes": ["blur"]}
    result = cast(KeyedResult, run_experiment("keyed", config, tmp_path / "out", show_progress=False))
    assert result.config["data"] == str(tmp_path / "mine.npz")
    table = README_TABLES["keyed-attributability"](json.loads((tmp_path / "out" / "results.json").read_text()))
    assert table.splitlines()[2].startswith("| plain |") and "| robust, on the post-process" in table
    assert (
        "genprov reproduce keyed --data"
        in json.loads((tmp_path / "out" / "results.json").read_text())["provenance"]["command"]
    )


@pytest.mark.filterwarnings("ignore::genprov.attribution.model.keyed.KeyConstraintWarning")  # 50 key steps
def test_tiny_run_typed_result_is_results_json_and_reuses_cache(tmp_path: Path, file_mtimes) -> None:
    out = tmp_path / "run"
    result = run_experiment("keyed", TINY, out, show_progress=False)
    assert isinstance(result, KeyedResult)
    assert (out / "report.html").is_file() and result.report == str(out / "report.html")
    saved = json.loads((out / "results.json").read_text())
    saved.pop("provenance", None)  # written by run_experiment beside the result
    assert list(saved) == RESULT_KEYS
    assert result.to_dict() == saved  # every field, every score, in results.json's order

    post_processes = ("blur", "crop", "noise", "jpeg", "combination")
    conditions = ("clean", *post_processes, "combination-mild", "blur@absolute", "combination@absolute")
    assert result.conditions == conditions and saved["conditions"] == list(conditions)
    assert result.test_strengths["blur"] == {"blur": 0.75} and "clean" not in result.test_strengths
    families = ["plain", *(f"robust-{c}" for c in post_processes), *VARIANTS]
    assert [g.family for g in result.goals] == ["plain", "plain", *families[1:6]]
    assert all(g.met == (g.value >= g.threshold) for g in result.goals)
    assert result.goals[0].value == result.metrics["plain"]["clean"].distinguishability
    assert result.psnr_to_root == {name: result.metrics[name]["clean"].psnr for name in families}
    assert list(result.metrics) == families and list(result.per_user) == families
    for name in families:
        assert tuple(result.metrics[name]) == conditions
        for cond in conditions:
            m = result.metrics[name][cond]
            users = result.per_user[name][cond]
            assert isinstance(m, ConditionMetrics) and all(isinstance(u, UserMetrics) for u in users)
            assert [u.user for u in users] == [0, 1]
            assert m.distinguishability == pytest.approx(np.mean([u.distinguishability for u in users]))
            assert m.attributability_min == min(u.attributability for u in users)
            shares = m.user_samples_none + m.user_samples_ambiguous + m.user_samples_other_user
            assert 0.0 <= shares <= 1.0 and 0.0 <= m.real_attributed_none <= 1.0
            assert "per_user" not in saved["metrics"][name][cond]  # rows live under "per_user" only
    assert saved["per_user"]["plain"]["clean"][1]["user"] == 1
    assert len(result.training["plain"]) == 2 and set(result.keys.warnings) == set(families)
    assert len(result.keys.angles_degrees) == 2 and result.keys.angles_degrees[0][1] == pytest.approx(90.0, abs=1e-3)
    assert result.keys.min_angle == pytest.approx(result.keys.angles_degrees[0][1])

    cached = file_mtimes(out, "*.safetensors")
    assert cached
    again = run_experiment("keyed", TINY, out, show_progress=False)  # every model and family from the cache
    assert isinstance(again, KeyedResult)
    assert again.metrics == result.metrics and again.per_user == result.per_user and again.keys == result.keys
    assert file_mtimes(out, "*.safetensors") == cached


def test_keyed_demo_section_on_a_tiny_root(tmp_path: Path) -> None:
    cfg = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
    torch.manual_seed(0)
    generator = Generator(cfg).eval()
    with torch.no_grad():
        generator.final_layer.bias.fill_(-1.0)  # samples near the digits' dark background
    save_checkpoint(tmp_path / "root", "gan", {"generator": generator}, cfg)
    root = SimpleNamespace(model=generator, checkpoint=tmp_path / "root")
    ctx = SimpleNamespace(
        config=DemoConfig(quick=True),
        dcgan=lambda: root,
        train=load_dataset("digits", split="train", n=300, seed=0),
        test=load_dataset("digits", split="test", n=100, seed=0),
        models_dir=tmp_path / "models",
        show_progress=False,
        results={},
        servable=[],
    )
    section = keyed_section(cast(DemoContext, ctx))
    assert section.id == "keyed" and len(section.blocks) >= 3
    summary = ctx.results["keyed"]
    rows = {row["images"]: row for row in summary["attribution_fractions"]}
    assert list(rows) == ["user-0", "user-1", "user-2", "root G0", "authentic"]
    assert summary["attributability"] == pytest.approx(np.mean([rows[f"user-{i}"][f"user-{i}"] for i in range(3)]))
    assert ctx.servable == [{"name": "demo-users", "kind": "keyed", "family": summary["family"]}]
    assert len(list((tmp_path / "models" / "keyed").glob("*/config.json"))) == 1
