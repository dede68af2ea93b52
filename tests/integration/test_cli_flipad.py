"""``genprov flipad fit / score`` end to end on a tiny GAN trained for a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genprov.cli.flipad import app
from genprov.data import load_dataset, save_images
from genprov.models.checkpoints import load_checkpoint
from genprov.models.gans import GANConfig
from genprov.models.sampling import sample
from genprov.models.training import default_train_config, train_gan

FAST_SETS = ["--set", "max_iter=20", "--set", "detector.n_epochs=2", "--set", "detector.widths=[8]"]


@pytest.fixture(scope="module")
def gan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8x8 DCGAN trained for 20 steps on digits."""
    folder = tmp_path_factory.mktemp("gan")
    cfg = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
    train_gan(cfg, default_train_config(cfg, n_steps=20, batch_size=32), load_dataset("digits", n=200), folder)
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_shows_examples(runner: CliRunner) -> None:
    for command in ("fit", "score"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: genprov flipad" in result.stdout


def test_fit_then_score(runner: CliRunner, gan: Path, tmp_path: Path) -> None:
    own_dir, real_dir = tmp_path / "own", tmp_path / "real"
    generator = load_checkpoint(gan).model
    save_images(sample(generator, 4, seed=123), own_dir)
    save_images(load_dataset("digits", split="test", n=4).images, real_dir)
    other_dir = tmp_path / "other"
    save_images(torch.rand(30, 1, 8, 8) * 2 - 1, other_dir)
    det = tmp_path / "det"
    args = ["fit", "--generator", str(gan), "--real", "digits", "--negatives", str(other_dir), "--out", str(det)]
    result = runner.invoke(app, [*args, "--n-samples", "60", "--n-real", "60", *FAST_SETS, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "flipad"
    assert summary["negatives"] == 90
    assert {p.name for p in det.iterdir()} == {"config.json", "state.safetensors"}  # config.json records the generator

    result = runner.invoke(
        app, ["score", "--detector", str(det), str(own_dir), str(real_dir / "img_00000.png"), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 5
    assert {"path", "verdict", "attributed", "score", "threshold"} <= set(rows[0])
    assert all((r["score"] >= r["threshold"]) == r["attributed"] for r in rows)

    result = runner.invoke(app, ["score", "--detector", str(det), str(own_dir)])
    assert result.exit_code == 0, result.output
    assert "attributed to the generator" in result.output


def test_baseline_method_and_errors(runner: CliRunner, gan: Path, tmp_path: Path) -> None:
    det = tmp_path / "raw"
    base = ["fit", "--generator", str(gan), "--real", "digits", "--n-samples", "40", "--n-real", "40"]
    result = runner.invoke(app, [*base, "--method", "raw-pixels", "--set", "detector.n_epochs=1", "--out", str(det)])
    assert result.exit_code == 0, result.output
    before = (det / "config.json").read_bytes()

    result = runner.invoke(app, [*base, "--set", "alpha=1", "--out", str(det)])
    assert result.exit_code == 2
    assert "already holds a raw-pixels detector" in result.output
    assert (det / "config.json").read_bytes() == before  # a refused fit leaves the saved detector intact

    result = runner.invoke(app, [*base, "--set", "alpah=1", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert "Did you mean 'alpha'" in result.output

    result = runner.invoke(app, [*base, "--method", "flipadd", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert "Did you mean 'flipad'" in result.output

    result = runner.invoke(app, ["score", "--detector", str(tmp_path / "nowhere"), str(tmp_path)])
    assert result.exit_code == 2
    assert "Fit one first" in result.output

    result = runner.invoke(app, ["score", "--detector", str(det), str(tmp_path / "missing.png")])
    assert result.exit_code == 2
    assert "does not exist" in result.output

    result = runner.invoke(app, ["fit", "--generator", str(tmp_path), "--real", "digits", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not a checkpoint" in result.output
