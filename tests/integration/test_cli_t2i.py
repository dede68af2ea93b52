"""``genprov train t2i --quick`` (tiny sizes) and ``genprov sample --prompt`` end to end on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from genprov.cli import sample as sample_cmd
from genprov.cli import train as train_cmd

#: --quick with a tiny architecture and a few steps, so the test takes seconds
TINY = [
    "image_size=16",
    "vae_block_out_channels=[8,16,16]",
    "unet_block_out_channels=[32,64]",
    "attention_heads=4",
    "text_hidden_size=32",
    "text_heads=2",
    "max_length=12",
    "vocab_size=600",
    "num_train_timesteps=100",
    "vae_steps=2",
    "unet_steps=2",
    "batch_size=8",
    "vae_batch_size=8",
]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(train_cmd.app, name="train")
    root.command("sample")(sample_cmd.sample)
    return root


@pytest.fixture(scope="module")
def pipeline(app: typer.Typer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-t2i") / "t2i"
    sets = [arg for pair in TINY for arg in ("--set", pair)]
    args = [
        "train",
        "t2i",
        "--data",
        "digits",
        "--captions",
        "labels",
        "--quick",
        *sets,
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 4 and summary["distinct_captions"] == 10 and summary["latent_size"] == 4
    again = CliRunner().invoke(app, [*args, "--json"])  # re-running resumes: a finished run returns at once
    assert again.exit_code == 0 and json.loads(again.stdout)["resumed_from"] == 4
    return out


def test_train_then_sample_with_prompts(app: typer.Typer, pipeline: Path, tmp_path: Path) -> None:
    assert (pipeline / "model_index.json").is_file()
    out = tmp_path / "samples"
    args = ["sample", str(pipeline), "--prompt", "a handwritten seven", "--prompt", "a handwritten one"]
    result = CliRunner().invoke(app, [*args, "--n", "2", "--ddim-steps", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompts"] == ["a handwritten seven", "a handwritten one"]
    with np.load(out / "samples.npz") as npz:
        assert npz["samples"].shape == (4, 1, 16, 16)
    assert (out / "grid.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "1"], "--prompt"),
        (["--prompt", " ".join(["a handwritten seven"] * 6)], "tokens long"),
        (["--prompt", "a handwritten one", "--ddim-steps", "0"], "--ddim-steps"),
    ],
)
def test_sample_bad_input_is_one_line(
    app: typer.Typer, pipeline: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["sample", str(pipeline), *args, "--out", str(out)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_train_bad_input_is_one_line(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "t2i"
    for args, message in [
        (["--captions", str(tmp_path / "none.json")], "does not exist"),
        (["--set", "unet_stepz=3"], "unet_steps"),
    ]:
        result = CliRunner().invoke(app, ["train", "t2i", "--data", "digits", "--quick", *args, "--out", str(out)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
        assert not out.exists()
