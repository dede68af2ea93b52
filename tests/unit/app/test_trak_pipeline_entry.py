"""A TRAK entry of a text-to-image pipeline with a LoRA in the service: registered with its pipeline, LoRA and
captions copied, answered with the query's prompt, refused (4xx) without it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from genprov.app.register import add_trak
from genprov.app.server import create_app
from genprov.app.workspace import TRAIN_CAPTIONS, Workspace
from genprov.cli.trak import app as trak_app
from genprov.data import load_dataset, save_images
from genprov.exceptions import CheckpointError, DataError
from genprov.models.t2i import LoRAConfig, load_pipeline, save_pipeline, tiny_pipeline, train_lora
from genprov.utils.seeding import torch_generator


@pytest.fixture(scope="module")
def t2i_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pipeline, a LoRA trained 2 steps on 4 images in class folders, and a D-TRAK store of them
    (captions from the labels: 'a photo of a horse', 'a photo of an automobile')."""
    root = tmp_path_factory.mktemp("t2i-entry")
    pipeline = save_pipeline(tiny_pipeline(0), root / "pipe")
    images = torch.rand(4, 3, 16, 16, generator=torch_generator(0, "t2i-entry")) * 2 - 1
    save_images(images[:2], root / "train" / "horse")
    save_images(images[2:], root / "train" / "automobile")
    train = load_dataset(str(root / "train"))
    captions = [
        f"a photo of {'an automobile' if train.class_names[int(y)] == 'automobile' else 'a horse'}"
        for y in train.labels
    ]
    lora = root / "lora"
    train_lora(
        load_pipeline(pipeline), train.images, captions, LoRAConfig(rank=2, steps=2, lr=1e-2, batch_size=2), lora
    )
    store = root / "store"
    args = ["featurize", "--model", str(pipeline), "--lora", str(lora), "--data", str(root / "train")]
    args += ["--captions", "labels", "--store", str(store), "--n-timesteps", "2", "--proj-dim", "16"]
    result = CliRunner().invoke(trak_app, args)
    assert result.exit_code == 0, result.output
    return {"root": root, "store": store, "pipeline": pipeline, "lora": lora}


@pytest.fixture(scope="module")
def workspace(t2i_store: dict[str, Path]) -> Workspace:
    ws = Workspace.create(t2i_store["root"] / "ws")
    entry = add_trak(ws, "lora-dtrak", t2i_store["store"])
    assert entry.info["t2i"] == {"lora": True} and entry.info["n_train"] == 4
    assert {"model/model_index.json", "lora/pytorch_lora_weights.safetensors", TRAIN_CAPTIONS} <= set(entry.files)
    return ws


@pytest.fixture(scope="module")
def client(workspace: Workspace) -> TestClient:
    return TestClient(create_app(workspace.folder), raise_server_exceptions=False)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_registered_entry_holds_its_captions(workspace: Workspace) -> None:
    assert (
        sorted(workspace.train_captions("lora-dtrak")) == ["a photo of a horse"] * 2 + ["a photo of an automobile"] * 2
    )
    captions = json.loads((workspace.entry_dir("lora-dtrak") / TRAIN_CAPTIONS).read_text())
    assert len(captions) == 4


def test_analysis_with_a_prompt(client: TestClient) -> None:
    page = client.get("/").text
    assert 'id="prompt"' in page and "needed by lora-dtrak" in page  # the page asks for the prompt, required
    assert [e["prompt"] for e in client.get("/api/entries").json()] == ["required"]
    answer = client.post("/api/attribute", files={"file": ("q.png", _png())}, data={"prompt": "a photo of a horse"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["prompt"] == "a photo of a horse"
    (entry,) = body["entries"]
    assert "error" not in entry, entry
    assert entry["prompt"] == "a photo of a horse" and entry["n_train"] == 4 and len(entry["positive"]) == 4
    other = client.post(
        "/api/attribute", files={"file": ("q.png", _png())}, data={"prompt": "a photo of an automobile"}
    )
    assert other.status_code == 200 and not other.json()["timing"]["cached"]  # the prompt is part of the query
    scores = [p["score"] for p in entry["positive"]]
    assert scores != [p["score"] for p in other.json()["entries"][0]["positive"]]
    assert "a photo of a horse" in client.get(body["url"]).text


def test_analysis_without_a_prompt_or_with_a_long_one_is_refused(client: TestClient) -> None:
    missing = client.post("/api/attribute", files={"file": ("q.png", _png())})
    assert missing.status_code == 422
    assert "'lora-dtrak'" in missing.json()["error"] and "form field 'prompt'" in missing.json()["error"]
    blank = client.post("/api/attribute", files={"file": ("q.png", _png())}, data={"prompt": "  "})
    assert blank.status_code == 422
    long = client.post("/api/attribute", files={"file": ("q.png", _png())}, data={"prompt": "a photo of a horse " * 9})
    assert long.status_code == 400 and "at most" in long.json()["error"]
    huge = client.post("/api/attribute", files={"file": ("q.png", _png())}, data={"prompt": "x" * 5000})
    assert huge.status_code == 400 and "4096 bytes" in huge.json()["error"]


def test_add_refuses_a_model_of_another_kind(t2i_store: dict[str, Path], workspace: Workspace, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(DataError, match="pass the store's own model"):
        add_trak(ws, "wrong", t2i_store["store"], model=t2i_store["lora"])
    with pytest.raises(CheckpointError, match="does not load"):  # captions that do not match the store's
        add_trak(ws, "wrong", t2i_store["store"], train=workspace.train_images("lora-dtrak"), captions=["a horse"] * 4)
    assert ws.entries == [] and not (ws.folder / "entries" / "wrong").exists()
