"""``genprov train lora`` on a saved tiny pipeline: plain LoRA, DreamBooth-style, and refused input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from genprov.cli.lora import lora
from genprov.models.t2i import load_pipeline, save_pipeline, tiny_pipeline
from genprov.models.t2i.lora import LORA_WEIGHTS, TOKEN_WEIGHTS, load_lora

app = typer.Typer()
app.command("lora")(lora)
app.command("unused")(lambda: None)  # two commands: the group keeps its sub-command names
RUNNER = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("t2i") / "pipe"
    save_pipeline(tiny_pipeline(channels=1), folder)
    return folder


def _run(*args: str) -> tuple[int, str]:
    result = RUNNER.invoke(app, ["lora", *args])
    return result.exit_code, result.output


def test_train_lora_command(tmp_path: Path, base: Path) -> None:
    out = tmp_path / "lora"
    common = ["--pipeline", str(base), "--data", "digits", "--n", "6", "--steps", "2", "--batch-size", "2"]
    code, output = _run(*common, "--set", "alpha=8", "--out", str(out), "--json")
    assert code == 0, output
    summary = json.loads(output[output.index("{") :])
    assert summary["kind"] == "lora"
    assert summary["images"] == 6
    assert summary["steps"] == 2
    info = load_lora(load_pipeline(base), out)
    assert info.config is not None
    assert info.config.alpha == 8
    code, output = _run(*common, "--out", str(out))  # alpha differs from the saved run
    assert code == 2
    assert "alpha: saved 8, now None" in output


def test_dreambooth_command(tmp_path: Path, base: Path) -> None:
    out = tmp_path / "v1"
    code, output = _run(
        "--pipeline",
        str(base),
        "--data",
        "digits",
        "--label",
        "7",
        "--n",
        "2",
        "--instance-prompt",
        "a <v1> seven",
        "--steps",
        "2",
        "--set",
        "n_class_images=2",
        "--set",
        "class_sample_steps=2",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, output
    assert json.loads(output[output.index("{") :])["kind"] == "dreambooth-lora"
    assert (out / LORA_WEIGHTS).is_file()
    assert (out / TOKEN_WEIGHTS).is_file()
    pipe = load_pipeline(base)
    assert load_lora(pipe, out).record["class_prompt"] == "a seven"
    assert "<v1>" in pipe.tokenizer.get_vocab()


def test_refused_input_is_one_line(tmp_path: Path, base: Path) -> None:
    code, output = _run("--pipeline", str(base), "--class-prompt", "a seven", "--out", str(tmp_path / "x"))
    assert code == 2
    assert "--class-prompt needs --instance-prompt" in output
    code, output = _run("--pipeline", str(tmp_path), "--out", str(tmp_path / "y"))
    assert code == 2
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()
