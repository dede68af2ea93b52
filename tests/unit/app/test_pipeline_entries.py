"""Entries about a text-to-image pipeline in the service: a FLIPAD detector of its VAE (the pipeline folder copied,
its VAE checked against the detector's record) and a similarity index (no pipeline needed), each answering an
upload and recording its prompt when given; a mismatched or missing pipeline is one line and writes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from genprov.app.engine import PROMPT_OPTIONAL
from genprov.app.register import add_flipad, add_similarity
from genprov.app.server import create_app
from genprov.app.workspace import Workspace
from genprov.attribution.data.index_folder import build_similarity_index
from genprov.cli.flipad import app as flipad_app
from genprov.cli.workspace import app as workspace_app
from genprov.data import save_images
from genprov.exceptions import CheckpointError, DataError
from genprov.models.t2i import save_pipeline, tiny_pipeline
from genprov.utils.seeding import torch_generator

#: ``genprov flipad fit`` on a tiny pipeline in a few seconds (the settings of tests/integration/test_cli_flipad_t2i).
FAST_FIT = ["--n-samples", "12", "--n-real", "12", "--sample-steps", "2", "--json", "--set", "max_iter=10"]
FAST_FIT += ["--set", "n_anchor=8", "--set", "detector.n_epochs=2", "--set", "detector.widths=[8]"]
PROMPT = "a photo of a horse"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny pipelines (seeds 0 and 1), 12 real 16x16 images, a FLIPAD detector of pipeline 0's VAE and a
    raw-pixel similarity index over the real images."""
    root = tmp_path_factory.mktemp("pipeline-entries")
    real = root / "real"
    save_images(torch.rand(12, 3, 16, 16, generator=torch_generator(0, "pipeline-entries")) * 2 - 1, real)
    own = save_pipeline(tiny_pipeline(0), root / "own")
    detector = root / "det"
    args = ["fit", "--generator", str(own), "--prompt", PROMPT, "--real", str(real), "--out", str(detector)]
    result = CliRunner().invoke(flipad_app, [*args, *FAST_FIT])
    assert result.exit_code == 0, result.output
    spec = {"name": str(real), "split": "train", "n": None, "seed": 0, "resize": 16, "data_root": None}
    build_similarity_index("pixels", root / "sim", spec)
    return {
        "root": root,
        "own": own,
        "other": save_pipeline(tiny_pipeline(1), root / "other"),
        "det": detector,
        "sim": root / "sim",
    }


@pytest.fixture(scope="module")
def workspace(parts: dict[str, Path]) -> Workspace:
    ws = Workspace.create(parts["root"] / "ws")
    entry = add_flipad(ws, "sd", parts["det"], generator=parts["own"])
    assert entry.info["pipeline"] is True and (entry.info["image_size"], entry.info["channels"]) == (16, 3)
    assert {"generator/model_index.json", "detector/config.json"} <= set(entry.files)
    add_similarity(ws, "sim", parts["sim"])
    return ws


@pytest.fixture(scope="module")
def client(workspace: Workspace) -> TestClient:
    return TestClient(create_app(workspace.folder), raise_server_exceptions=False)


def _png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (40, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_and_api_offer_an_optional_prompt(client: TestClient) -> None:
    listed = {e["name"]: e["prompt"] for e in client.get("/api/entries").json()}
    assert listed == {"sd": PROMPT_OPTIONAL, "sim": PROMPT_OPTIONAL}
    page = client.get("/").text
    assert (
        'id="prompt"' in page and "Prompt (optional)" in page and " required" not in page.split('id="prompt"')[1][:80]
    )


def test_answers_record_the_prompt_and_the_page_shows_it(client: TestClient) -> None:
    answer = client.post("/api/attribute", files={"file": ("q.png", _png(32))}, data={"prompt": PROMPT})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    sd, sim = body["entries"]
    assert "error" not in sd and "error" not in sim, body
    assert sd["prompt"] == PROMPT and sim["prompt"] == PROMPT and body["prompt"] == PROMPT
    assert sd["verdict"] in {"made by sd", "not made by sd"} and sd["attributed"] == (sd["score"] >= sd["threshold"])
    assert sd["notes"] == ["resized from 32x32 to 16x16"]  # to the pipeline's VAE size, as the GAN path does
    assert len(sim["positive"]) == 8 and sim["n_train"] == 12
    page = client.get(body["url"]).text
    assert f"<q>{PROMPT}</q>" in page and sd["verdict"] in page
    plain = client.post("/api/attribute", files={"file": ("q.png", _png(32))})
    assert plain.status_code == 200  # the prompt is optional for these entries
    assert all("prompt" not in e for e in plain.json()["entries"]) and "prompt" not in plain.json()
    assert [e["score"] for e in plain.json()["entries"][:1]] == [sd["score"]]


def test_a_detector_of_a_pipeline_needs_that_pipeline(parts: dict[str, Path], tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(DataError, match="pipeline folder with --generator"):
        add_flipad(ws, "sd", parts["det"])
    with pytest.raises(CheckpointError, match="not fitted on the VAE of"):
        add_flipad(ws, "sd", parts["det"], generator=parts["other"])
    assert ws.entries == [] and not (ws.folder / "entries").exists()


def test_cli_adds_a_pipeline_detector_and_refuses_a_mismatched_one_in_one_line(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    runner, ws = CliRunner(), tmp_path / "ws"
    base = ["add", "flipad", "--workspace", str(ws), "--name", "sd", "--detector", str(parts["det"])]
    wrong = runner.invoke(workspace_app, [*base, "--generator", str(parts["other"])])
    assert wrong.exit_code == 2 and "not fitted on the VAE" in wrong.output and "Traceback" not in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1, wrong.output
    assert json.loads((ws / "workspace.json").read_text())["entries"] == [] and not (ws / "entries").exists()
    ok = runner.invoke(workspace_app, [*base, "--generator", str(parts["own"]), "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.stdout)
    assert summary["kind"] == "flipad" and summary["image_size"] == 16 and summary["generator"] == str(parts["own"])
