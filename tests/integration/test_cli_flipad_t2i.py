"""``genprov flipad fit / score`` on a text-to-image pipeline folder (its VAE is the generator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genprov.cli.flipad import app
from genprov.data import save_images
from genprov.utils.seeding import torch_generator

pytest.importorskip("diffusers")
from genprov.models.t2i import save_pipeline, tiny_pipeline

FAST = ["--n-samples", "12", "--n-real", "12", "--sample-steps", "3", "--json"]
FAST_SETS = [
    "--set",
    "max_iter=10",
    "--set",
    "n_anchor=8",
    "--set",
    "detector.n_epochs=2",
    "--set",
    "detector.widths=[8]",
]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t2i")
    real = root / "real"
    save_images(torch.rand(12, 3, 16, 16, generator=torch_generator(0, "cli-real")) * 2 - 1, real)
    return {
        "own": save_pipeline(tiny_pipeline(0), root / "own"),
        "other": save_pipeline(tiny_pipeline(1), root / "other"),
        "real": real,
    }


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(("method", "sets"), [("flipad", FAST_SETS), ("aeroblade", [])])
def test_fit_then_score_a_pipeline(method: str, sets: list[str], pipelines: dict[str, Path], tmp_path: Path) -> None:
    runner, det = CliRunner(), tmp_path / "det"
    args = ["fit", "--generator", str(pipelines["own"]), "--prompt", "a photo of a horse", "--real"]
    result = runner.invoke(app, [*args, str(pipelines["real"]), "--method", method, "--out", str(det), *FAST, *sets])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == method and summary["own samples"] == 12

    queries = [str(pipelines["real"] / "img_00000.png")]
    result = runner.invoke(app, ["score", "--detector", str(det), *queries, "--json"])
    assert result.exit_code == 2 and "--generator PIPELINE" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["score", "--detector", str(det), "--generator", str(pipelines["other"]), *queries])
    assert result.exit_code == 2 and "fingerprint" in result.output
    result = runner.invoke(
        app, ["score", "--detector", str(det), "--generator", str(pipelines["own"]), *queries, "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["threshold"] == pytest.approx(summary["threshold"])


def test_prompt_errors_are_one_line_and_write_nothing(pipelines: dict[str, Path], tmp_path: Path) -> None:
    runner, out = CliRunner(), tmp_path / "det"
    base = ["fit", "--real", str(pipelines["real"]), "--out", str(out), *FAST]
    cases = [
        (["--generator", str(pipelines["own"])], "--prompt TEXT"),
        (["--generator", str(pipelines["real"]), "--prompt", "a photo of a horse"], "not one"),
        (
            ["--generator", str(pipelines["own"]), "--prompt", "a photo of a horse", "--method", "latent-inversion"],
            "sample_latent",
        ),
    ]
    for extra, needle in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert _snapshot(out) == []
