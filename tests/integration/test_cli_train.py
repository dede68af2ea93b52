"""``genprov train gan|ddpm|classifier`` and ``genprov sample`` end to end on digits, a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from genprov.cli import sample as sample_cmd
from genprov.cli import train as train_cmd


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The two command groups mounted as in ``genprov.cli.main``."""
    root = typer.Typer()
    root.add_typer(train_cmd.app, name="train")
    root.command("sample")(sample_cmd.sample)
    return root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _json(output: str) -> dict[str, object]:
    data = json.loads(output)
    assert isinstance(data, dict)
    return data


def test_help_shows_examples(app: typer.Typer, runner: CliRunner) -> None:
    for args, example in [
        (["train", "--help"], "genprov train gan --data digits --arch dcgan --steps 2000 --out runs/dcgan"),
        (["train", "gan", "--help"], "Example: genprov train gan"),
        (["train", "ddpm", "--help"], "Example: genprov train ddpm"),
        (["train", "classifier", "--help"], "Example: genprov train classifier"),
        (["sample", "--help"], "Example: genprov sample"),
    ]:
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert example in " ".join(result.stdout.split())


def test_train_gan_then_sample(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "dcgan"
    args = ["train", "gan", "--data", "digits", "--arch", "dcgan", "--steps", "4", "--batch-size", "16"]
    result = runner.invoke(app, [*args, "--width", "8", "--seed", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = _json(result.stdout)
    assert summary["kind"] == "gan"
    assert summary["steps"] == 4
    assert summary["resumed_from"] == 0
    assert (out / "config.json").is_file()
    assert (out / "train_log.jsonl").is_file()

    again = runner.invoke(app, [*args, "--width", "8", "--seed", "1", "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert _json(again.stdout)["resumed_from"] == 4  # cached, not retrained

    samples = tmp_path / "samples"
    result = runner.invoke(app, ["sample", str(out), "--n", "10", "--seed", "3", "--out", str(samples), "--json"])
    assert result.exit_code == 0, result.output
    info = _json(result.stdout)
    assert info["shape"] == [10, 1, 8, 8]
    assert Path(str(info["grid"])).is_file()
    with np.load(samples / "samples.npz", allow_pickle=False) as npz:
        first = npz["samples"]
    assert first.shape == (10, 1, 8, 8)
    assert np.abs(first).max() <= 1

    # same seed, same samples
    runner.invoke(app, ["sample", str(out), "--n", "10", "--seed", "3", "--out", str(tmp_path / "again")])
    with np.load(tmp_path / "again" / "samples.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["samples"], first)


def test_train_ddpm_and_sample(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "ddpm"
    result = runner.invoke(
        app, ["train", "ddpm", "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["sample", str(out), "--n", "3", "--ddim-steps", "3", "--out", str(tmp_path / "s"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert _json(result.stdout)["kind"] == "ddpm"


def test_train_classifier(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "clf"
    result = runner.invoke(app, ["train", "classifier", "--steps", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = _json(result.stdout)
    assert summary["kind"] == "classifier"
    assert "accuracy" in summary
    # a classifier cannot be sampled: a one-line error, exit code 2
    result = runner.invoke(app, ["sample", str(out), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "not generative" in result.output


def test_errors_are_one_line_and_keep_earlier_outputs(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "gan", "--arch", "dcgam", "--steps", "1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "Did you mean 'dcgan'" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "does not exist" in result.output

    out = tmp_path / "gan"
    ok = runner.invoke(app, ["train", "gan", "--steps", "2", "--width", "8", "--batch-size", "8", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    before = (out / "model.safetensors").read_bytes()
    # resuming with another architecture is refused and leaves the checkpoint alone
    result = runner.invoke(app, ["train", "gan", "--steps", "4", "--width", "4", "--out", str(out)])
    assert result.exit_code == 2
    assert "width" in result.output
    assert (out / "model.safetensors").read_bytes() == before
