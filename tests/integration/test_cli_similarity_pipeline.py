"""``genprov similarity query --pipeline [--lora] --prompt``: queries generated from a text-to-image pipeline (and a
customization's LoRA with its token) and attributed in one step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genprov.cli.similarity import app
from genprov.models.t2i import LoRAConfig, save_pipeline, tiny_pipeline, train_dreambooth_lora

torch.set_num_threads(1)

PROMPT = "a handwritten <v1> seven"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(index of 20 digits at 16x16, pipeline folder, LoRA folder with the token <v1>)."""
    root = tmp_path_factory.mktemp("sim-t2i")
    index = root / "index"
    result = CliRunner().invoke(
        app,
        ["index", "--extractor", "pixels", "--data", "digits", "--n", "20", "--resize", "16", "--store", str(index)],
    )
    assert result.exit_code == 0, result.output
    pipeline = save_pipeline(tiny_pipeline(0), root / "pipeline")
    config = LoRAConfig(rank=2, steps=2, batch_size=1, n_class_images=1, class_sample_steps=2, checkpoint_every=0)
    exemplar = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    train_dreambooth_lora(tiny_pipeline(0), exemplar, config, root / "lora", instance_prompt=PROMPT, token="<v1>")
    return index, pipeline, root / "lora"


def test_query_generates_from_a_customized_pipeline(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    index, pipeline, lora = folders
    out = tmp_path / "why"
    args = ["query", "--store", str(index), "--pipeline", str(pipeline), "--lora", str(lora), "--prompt", PROMPT]
    result = CliRunner().invoke(app, [*args, "--n", "2", "--steps", "2", "--top-k", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["pipeline"] == str(pipeline) and summary["lora"] == str(lora)
    assert [q["prompt"] for q in summary["queries"]] == [PROMPT, PROMPT]
    assert all(len(q["top"]) == 3 for q in summary["queries"])
    assert sorted(p.name for p in (out / "queries").glob("*.png")) == ["query_00000.png", "query_00001.png"]
    assert (out / "gallery.html").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", PROMPT], "--lora and --prompt need --pipeline"),
        (["--pipeline", "PIPE"], "--prompt"),
        (["--pipeline", "PIPE", "--prompt", "a handwritten seven", "QUERY"], "not both"),
    ],
)
def test_query_pipeline_misuse_is_a_one_line_error(
    folders: tuple[Path, Path, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    index, pipeline, _ = folders
    args = [str(pipeline) if a == "PIPE" else str(tmp_path / "q.png") if a == "QUERY" else a for a in extra]
    (tmp_path / "q.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["query", "--store", str(index), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing written
