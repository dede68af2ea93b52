"""``genprov explain`` and ``genprov privacy audit / defend`` end to end on tiny classifiers, and their errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from genprov.cli import privacy as privacy_cmd
from genprov.config import Config
from genprov.data import load_dataset, save_images
from genprov.models.checkpoints import MODEL_KINDS, ModelKind, save_checkpoint
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import EXPLAINERS, Defense

torch.set_num_threads(1)

# the lead registers them in cli/main.py the same way
cli = typer.Typer(add_completion=False)
cli.command("explain")(privacy_cmd.explain)
cli.add_typer(privacy_cmd.app, name="privacy")

FAST = [
    "--set",
    "attack.max_epochs=4",
    "--set",
    "attack.width=4",
    "--set",
    "gnime.n_epochs=2",
    "--set",
    "gnime.width=4",
]
FAST += ["--set", "gnime.inverter_width=4"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SeqConfig(Config):
    """A test-only checkpoint kind: an ``nn.Sequential`` classifier of 8x8 images."""

    image_size: int = 8
    channels: int = 1
    layers: str = "mlp"


def _build_seq(cfg: _SeqConfig) -> dict[str, nn.Module]:
    if cfg.layers == "mlp":  # no conv layer: Grad-CAM cannot explain it
        return {"classifier": nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))}
    # a Tanh: LRP has no rule for it
    return {"classifier": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(256, 10))}


@pytest.fixture
def seq_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        MODEL_KINDS, "seq-classifier", ModelKind("seq-classifier", _SeqConfig, _build_seq, "classifier")
    )


def _seq_checkpoint(folder: Path, layers: str) -> Path:
    cfg = _SeqConfig(layers=layers)
    torch.manual_seed(0)
    save_checkpoint(folder, "seq-classifier", _build_seq(cfg), cfg)
    return folder


def _cnn_checkpoint(folder: Path, size: int) -> Path:
    cfg = ClassifierConfig(image_size=size, width=4, feature_dim=8)
    torch.manual_seed(0)
    save_checkpoint(folder, "classifier", {"classifier": CNNClassifier(cfg)}, cfg)
    return folder


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cnn_checkpoint(tmp_path_factory.mktemp("clf8"), 8)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    save_images(load_dataset("digits", split="test", n=3, seed=0).images, folder)
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_shows_examples(runner: CliRunner) -> None:
    for args in (["explain", "--help"], ["privacy", "audit", "--help"], ["privacy", "defend", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "Example: genprov" in result.output


@pytest.mark.parametrize("method", ["gradient", "grad-cam", "lrp"])
def test_explain_writes_overlays_and_page(
    runner: CliRunner, model8: Path, pngs: Path, tmp_path: Path, method: str
) -> None:
    out = tmp_path / "explain"
    result = runner.invoke(
        cli, ["explain", "--model", str(model8), "--method", method, str(pngs), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == method and len(summary["images"]) == 3
    for row in summary["images"]:
        assert (out / row["overlay"]).is_file() and (out / row["map"]).is_file()
    assert (out / "index.html").is_file() and (out / "results.json").is_file()
    maps = np.load(out / "explanations.npz")["maps"]
    assert maps.shape == (3, 1, 8, 8) and maps.min() >= 0 and maps.max() <= 1


def test_explain_bad_inputs(runner: CliRunner, model8: Path, pngs: Path, tmp_path: Path, seq_kind: None) -> None:
    # images of another size than the model: the maps' shape would not match
    model16 = _cnn_checkpoint(tmp_path / "clf16", 16)
    result = runner.invoke(cli, ["explain", "--model", str(model16), str(pngs), "--out", str(tmp_path / "o1")])
    assert result.exit_code == 2
    assert "8x8" in result.output and "16x16" in result.output and "--resize" in result.output
    assert not (tmp_path / "o1").exists()
    result = runner.invoke(
        cli, ["explain", "--model", str(model16), str(pngs), "--resize", "--out", str(tmp_path / "o2")]
    )
    assert result.exit_code == 0, result.output

    # missing checkpoint
    result = runner.invoke(
        cli, ["explain", "--model", str(tmp_path / "nope"), str(pngs), "--out", str(tmp_path / "o3")]
    )
    assert result.exit_code == 2 and "No checkpoint" in result.output

    # Grad-CAM on a model without a conv layer
    mlp = _seq_checkpoint(tmp_path / "mlp", "mlp")
    result = runner.invoke(
        cli, ["explain", "--model", str(mlp), "--method", "grad-cam", str(pngs), "--out", str(tmp_path / "o4")]
    )
    assert result.exit_code == 2
    assert "Grad-CAM needs a convolutional layer" in result.output and "Sequential" in result.output

    # LRP on a layer it has no rule for: the message names the layer
    tanh = _seq_checkpoint(tmp_path / "tanh", "tanh")
    result = runner.invoke(
        cli, ["explain", "--model", str(tanh), "--method", "lrp", str(pngs), "--out", str(tmp_path / "o5")]
    )
    assert result.exit_code == 2
    assert "'1' (Tanh)" in result.output

    # an unknown method gets a suggestion
    result = runner.invoke(
        cli, ["explain", "--model", str(model8), "--method", "gradcam", str(pngs), "--out", str(tmp_path / "o6")]
    )
    assert result.exit_code == 2 and "grad-cam" in result.output


def test_defend_then_audit(runner: CliRunner, model8: Path, tmp_path: Path) -> None:
    saved = tmp_path / "gnime"
    args = [
        "privacy",
        "defend",
        "--model",
        str(model8),
        "--data",
        "digits",
        "--n",
        "60",
        "--a",
        "10",
        "--out",
        str(saved),
    ]
    result = runner.invoke(cli, [*args, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["defense"] == "gnime" and summary["distortion"] >= 0
    defense = Defense.from_pretrained(
        saved, EXPLAINERS.create("gradient", CNNClassifier(ClassifierConfig(width=4, feature_dim=8)))
    )
    assert defense.name == "gnime"

    out = tmp_path / "audit"
    args = ["privacy", "audit", "--model", str(model8), "--data", "digits", "--n", "120", "--defense", str(saved)]
    result = runner.invoke(cli, [*args, "--out", str(out), "--quick", *FAST, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    attacks = [(r["threat model"], r["attack"]) for r in report["rows"]]
    assert ("adaptive", "ExpMI vs gnime") in attacks and ("non-adaptive", "PredMI") in attacks
    assert len(attacks) == 8
    assert all(0 <= r["mse"]["mean"] <= 1 for r in report["rows"])
    assert (out / "report.html").is_file() and (out / "attacks" / "exp-mi" / "model.safetensors").is_file()

    # matched Gaussian noise from the saved GNIME
    rnd = tmp_path / "rnd"
    args = ["privacy", "defend", "--model", str(model8), "--data", "digits", "--n", "60", "--method", "gaussian-noise"]
    result = runner.invoke(cli, [*args, "--match", str(saved), "--out", str(rnd), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["defense"] == "gaussian-noise"


def test_audit_and_defend_bad_inputs(runner: CliRunner, model8: Path, tmp_path: Path) -> None:
    # a defense fitted on 16x16 maps meets 8x8 explanations: the shape mismatch is named
    model16 = _cnn_checkpoint(tmp_path / "clf16", 16)
    saved = tmp_path / "gnime16"
    args = ["privacy", "defend", "--model", str(model16), "--data", "digits", "--n", "40", "--out", str(saved)]
    result = runner.invoke(cli, [*args, *FAST])
    assert result.exit_code == 0, result.output
    args = ["privacy", "audit", "--model", str(model8), "--data", "digits", "--n", "80", "--defense", str(saved)]
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "audit"), "--quick", *FAST])
    assert result.exit_code == 2
    assert "(n, 1, 16, 16)" in result.output and "(" in result.output

    # gaussian-noise needs exactly one of --sigma / --match
    args = ["privacy", "defend", "--model", str(model8), "--data", "digits", "--method", "gaussian-noise"]
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "rnd")])
    assert result.exit_code == 2 and "--sigma" in result.output

    # a missing defense folder
    args = ["privacy", "audit", "--model", str(model8), "--data", "digits", "--defense", str(tmp_path / "none")]
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "a2")])
    assert result.exit_code == 2 and "No saved defense" in result.output
