"""``genprov keyed create / attribute`` end to end on a tiny GAN checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genprov.attribution.model.keyed import KeyedAttributionResult, KeyedGenerators
from genprov.cli.keyed import app
from genprov.data import load_dataset, save_images
from genprov.models.checkpoints import save_checkpoint
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import sample

FAST = ["--set", "user_steps=150", "--set", "key_steps=300", "--set", "n_compliance=200", "--set", "lr=0.005"]
FAST += ["--set", "batch_size=32", "--set", "n_real=300"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8x8 generator whose samples sit near the digits' dark background."""
    folder = tmp_path_factory.mktemp("root")
    cfg = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
    torch.manual_seed(0)
    generator = Generator(cfg).eval()
    with torch.no_grad():
        generator.final_layer.bias.fill_(-1.0)
    save_checkpoint(folder, "gan", {"generator": generator}, cfg)
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_shows_examples(runner: CliRunner) -> None:
    for command in ("create", "attribute"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: genprov keyed" in result.stdout


def test_create_then_attribute(runner: CliRunner, root: Path, tmp_path: Path) -> None:
    family = tmp_path / "family"
    args = ["create", "--root", str(root), "--n-keys", "2", "--out", str(family), *FAST, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["keys"] == 2 and summary["robust"] == "none"
    assert summary["self-check attributability"] > 0.9
    assert summary["smallest key angle"] == pytest.approx(90.0, abs=1e-3)
    assert {p.name for p in family.iterdir()} == {"config.json", "root", "keys", "users"}

    fam = KeyedGenerators.from_pretrained(family)
    user_dir, real_dir = tmp_path / "user1", tmp_path / "real"
    save_images(sample(fam.user(1), 5, seed=77), user_dir)
    save_images(load_dataset("digits", split="test", n=3).images, real_dir)
    saved = tmp_path / "attribution"
    args_attr = ["attribute", "--family", str(family), str(user_dir), str(real_dir), "--out", str(saved), "--json"]
    result = runner.invoke(app, args_attr)
    assert result.exit_code == 0, result.output
    assert KeyedAttributionResult.load(saved).labels == [r["attribution"] for r in json.loads(result.stdout)]
    rows = json.loads(result.stdout)
    assert len(rows) == 8 and {"path", "attribution", "user", "responses"} <= set(rows[0])
    assert sum(r["attribution"] == "user-1" for r in rows[:5]) >= 4
    assert all(r["attribution"] == "none" and r["user"] is None for r in rows[5:])
    assert all(len(r["responses"]) == 2 for r in rows)

    result = runner.invoke(app, ["attribute", "--family", str(family), str(user_dir)])
    assert result.exit_code == 0, result.output
    assert "user-1" in result.output

    # a second create on the finished family resumes (nothing to train) and reports the same family
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["keys"] == 2


def test_errors_are_one_line_messages(runner: CliRunner, root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["attribute", "--family", str(tmp_path / "nothing"), str(tmp_path)])
    assert result.exit_code == 2
    assert "not a keyed family" in result.output

    result = runner.invoke(
        app, ["create", "--root", str(root), "--n-keys", "2", "--robust", "blurr", "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2
    assert "Did you mean 'blur'" in result.output

    family = tmp_path / "family"
    result = runner.invoke(app, ["create", "--root", str(root), "--n-keys", "1", "--out", str(family), *FAST])
    assert result.exit_code == 0, result.output
    big = tmp_path / "big"
    save_images(torch.zeros(1, 1, 16, 16), big)
    result = runner.invoke(app, ["attribute", "--family", str(family), str(big)])
    assert result.exit_code == 2
    assert "8x8" in result.output
