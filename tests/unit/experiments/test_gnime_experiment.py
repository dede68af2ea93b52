"""``genprov reproduce gnime``: config presets and validation, and a tiny end-to-end run with its cache."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import torch

import genprov.experiments.gnime  # noqa: F401  (registers the experiment)
from genprov.data import load_dataset
from genprov.eval.stats import holm_adjust
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, run_experiment
from genprov.experiments.gnime import GNIMEExperimentConfig, GNIMEResult, privacy_section
from genprov.experiments.quickstart import DemoConfig, DemoContext
from genprov.experiments.readme import README_TABLES
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import AttackConfig, GNIMEConfig

torch.set_num_threads(1)

TINY = {
    "data": "digits",
    "seed": 0,
    "quick": True,
    "n_data": 300,
    "classifier_steps": 60,
    "classifier_width": 8,
    "a": 10.0,
    "a_sweep": [1.0],
    "attack": {"width": 4, "depth": 1, "max_epochs": 3, "patience": 2},
    "gnime": {"width": 4, "inverter_width": 4, "inverter_depth": 1, "n_epochs": 2},
    "n_grid": 4,
    "n_boot": 50,
}


def test_presets_and_defaults() -> None:
    assert "gnime" in EXPERIMENTS.names()
    digits = GNIMEExperimentConfig.from_dict({})
    assert digits.size == 8 and digits.main_a == 100.0 and digits.sweep == (1.0, 3.0, 10.0, 30.0, 100.0)
    faces = GNIMEExperimentConfig.from_dict({"data": "olivetti"})
    assert faces.size == 32 and faces.main_a == 500.0 and 500.0 in faces.sweep
    assert faces.gnime.n_epochs == 230 and faces.attack.batch_size == 32 and faces.classifier_n_pool == 3
    quick = GNIMEExperimentConfig.from_dict({"quick": True, "attack": {"lr": 0.01}, "a_sweep": [2]})
    assert quick.attack == AttackConfig(width=16, max_epochs=40, patience=6, lr=0.01)  # nested dicts merge
    assert quick.sweep == (2.0, 100.0) and quick.n_data == 900
    explicit = GNIMEExperimentConfig.from_dict({"a": 7, "a_sweep": [1, 7]})
    assert explicit.sweep == (1.0, 7.0)


def test_defense_variants() -> None:
    faithful = GNIMEExperimentConfig.from_dict({})
    assert faithful.defense_variant == "unet" and not faithful.ablation
    assert (faithful.gnime.generator, faithful.gnime.clamp, faithful.gnime.standardize) == ("unet", True, True)
    residual = GNIMEExperimentConfig.from_dict({"defense_variant": "residual", "gnime": {"lr": 0.01}})
    assert (
        residual.gnime.generator == "residual" and not residual.gnime.clamp and residual.gnime.updates == "alternating"
    )
    assert residual.gnime.lr == 0.01 and residual.gnime.n_epochs == faithful.gnime.n_epochs  # explicit values win
    assert faithful.gnime.lr == 1e-3 and faithful.gnime.n_epochs == 200  # the shared budget (GNIME_SIZES)
    assert GNIMEExperimentConfig.from_dict(residual.to_dict()) == residual
    other = faithful.variant_gnime("residual")
    assert other == residual.gnime.replace(lr=1e-3) and faithful.variant_gnime("unet") == faithful.gnime


def test_config_round_trip() -> None:
    cfg = GNIMEExperimentConfig.from_dict({**TINY, "explainer": "lrp"})
    assert GNIMEExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.gnime, GNIMEConfig) and cfg.gnime.inverter_depth == 1
    assert json.loads(json.dumps(cfg.to_dict()))["attack"]["width"] == 4


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"explainer": "smoothgrad"}, "explainer"),
        ({"a": -1}, "a"),
        ({"a_sweep": [1, -3]}, "a_sweep"),
        ({"rnd_sigmas": [0.0]}, "rnd_sigmas"),
        ({"image_size": 4}, "image_size"),
        ({"n_data": 10}, "n_data"),
        ({"top_q": 0}, "top_q"),
        ({"classifier_n_pool": 3}, "classifier_n_pool"),
        ({"classifier_n_conv": 1}, "classifier_n_conv"),
        ({"attack": {"width": 0}}, "width"),
        ({"gnime": {"n_layers": 1}}, "n_layers"),
        ({"defense_variant": "mlp"}, "defense_variant"),
        ({"gnime": {"updates": "sometimes"}}, "updates"),
        ({"seeds": 1}, "seeds"),
    ],
)
def test_invalid_configs_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        GNIMEExperimentConfig.from_dict(values)


def test_tiny_run_writes_results_report_and_reuses_cache(tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = run_experiment("gnime", {**TINY, "ablation": True}, out, show_progress=False)
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
    saved = json.loads((out / "results.json").read_text())
    sizes = saved["splits"]
    assert sum(sizes.values()) == 300 and all(v > 0 for v in sizes.values())
    main, sweep, ablation = (README_TABLES[k](saved) for k in ("gnime-main", "gnime-sweep", "gnime-ablation"))
    assert main.count("\n") == 2 + 6 and sweep.count("\n") == 2 + len(saved["sweep"])  # README tables render
    assert "| unet |" in ablation and "| residual |" in ablation
    for threat in ("non-adaptive", "adaptive"):
        rows = saved["table"][threat]
        assert [r["attack"] for r in rows] == ["ExpMI (no defense)", "RND", "GNIME", "PredMI"]
        for row in rows:
            assert {"mse", "ssim", "psnr", "tca", "distortion"} <= set(row)
            assert row["mse"]["low"] <= row["mse"]["mean"] <= row["mse"]["high"]
        assert rows[0]["distortion"] == 0.0 and rows[3]["distortion"] is None
        assert rows[1]["distortion"]["mean"] == pytest.approx(rows[2]["distortion"]["mean"], rel=0.5, abs=1e-4)
    assert [p["a"] for p in saved["sweep"]] == [1.0, 10.0]
    for point in saved["sweep"]:
        assert set(point["comparison"]) == {"non-adaptive", "adaptive"}
        assert point["rnd_sigma"] == pytest.approx(point["matched_distortion_defender"] ** 0.5)
    assert "PredMI" in saved["finding"]["text"] and "Adaptive attacker" in saved["finding"]["text"]
    # Holm over every sweep point x threat model: adjusted p-values are the step-down ones; wins need them
    comparisons = [p["comparison"][t] for p in saved["sweep"] for t in ("non-adaptive", "adaptive")]
    raw = [c["mse_p_value"] for c in comparisons]
    assert [c["mse_p_holm"] for c in comparisons] == pytest.approx(list(holm_adjust(raw)))
    assert all(c["mse_p_holm"] >= c["mse_p_value"] for c in comparisons)
    for threat in ("adaptive", "non-adaptive"):
        for row in saved["finding"][threat]:
            assert row["gnime_wins_mse"] == (row["p_holm"] < 0.05 and row["mse_gain"]["mean"] > 0)
    assert saved["multiplicity"]["correction"] == "Holm-Bonferroni"
    # training steps are recorded: 300 images, defender half (150), batches of 128 -> 2 steps an epoch
    history = saved["sweep"][0]["gnime_history"]
    assert [h["step"] for h in history] == [2.0 * (i + 1) for i in range(len(history))]
    # the ablation: both variants at the main weight, each beside its own RND
    assert [r["variant"] for r in saved["ablation"]] == ["unet", "residual"]
    assert saved["ablation"][1]["settings"]["generator"] == "residual" and saved["ablation"][0]["gnime_map_std"] > 0
    assert saved["ablation"][0]["distortion"] == saved["sweep"][1]["gnime"]["distortion"]
    page = (out / "report.html").read_text()
    assert "Ablation: GNIME variants" in page and "p (Holm)" in page and "change privacy, last 10%" in page
    # the non-adaptive ExpMI row without defense equals the clean baseline
    assert saved["table"]["adaptive"][0]["mse"] == saved["baseline"]["exp-mi"]["mse"]

    cached = {f: f.stat().st_mtime_ns for f in (out / "cache").rglob("*.safetensors")}
    assert len(cached) >= 2 + 3 * len(saved["sweep"])  # ExpMI, PredMI; per a: GNIME + two adaptive attacks
    typed = results.to_dict()
    typed.pop("provenance", None)  # added to results.json by the runner (command, versions)
    assert isinstance(results, GNIMEResult) and typed == {k: v for k, v in saved.items() if k != "provenance"}
    main = next(p for p in results.sweep if p.a == results.main_a)
    for threat in ("non-adaptive", "adaptive"):
        assert results.row(threat, "GNIME").distortion == main.gnime.distortion
        assert results.row(threat, "GNIME").mse == main.gnime.against(threat)["mse"]
        assert results.row(threat, "ExpMI (no defense)").mse == results.baseline["exp-mi"]["mse"]
    again = run_experiment("gnime", {**TINY, "ablation": True}, out, show_progress=False)  # all from the cache
    assert json.loads((out / "results.json").read_text())["table"] == saved["table"]
    assert isinstance(again, GNIMEResult) and again.table == results.table
    assert {f: f.stat().st_mtime_ns for f in (out / "cache").rglob("*.safetensors")} == cached  # nothing refitted


def test_privacy_demo_section_on_a_small_context(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CNNClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    clf = SimpleNamespace(model=model, checkpoint=tmp_path / "clf", step=0)
    ctx = SimpleNamespace(
        config=DemoConfig(quick=True),
        classifier=lambda: clf,
        train=load_dataset("digits", split="train", n=200, seed=0),
        test=load_dataset("digits", split="test", n=40, seed=0),
        models_dir=tmp_path / "models",
        show_progress=False,
        results={},
    )
    section = privacy_section(cast(DemoContext, ctx))
    assert section.id == "privacy" and len(section.blocks) >= 2
    rows = ctx.results["privacy"]
    assert set(rows) == {"ExpMI (no defense)", "GNIME, non-adaptive attacker", "GNIME, adaptive attacker", "PredMI"}
    assert rows["GNIME, adaptive attacker"]["distortion"] > 0
    assert any((tmp_path / "models" / "privacy").rglob("model.safetensors"))
