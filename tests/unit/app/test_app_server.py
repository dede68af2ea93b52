"""The provenance service through FastAPI's test client: every endpoint and every bad input."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genprov.app.server import create_app


@pytest.fixture(scope="module")
def workspace(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("server") / "ws"
    shutil.copytree(tiny_workspace, copy)
    return copy


@pytest.fixture(scope="module")
def client(workspace: Path) -> TestClient:
    return TestClient(create_app(workspace, max_upload_mb=0.05), raise_server_exceptions=False)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _digit_png(workspace: Path) -> bytes:
    return sorted((workspace / "examples").glob("*.png"))[0].read_bytes()


def test_health_entries_examples_and_docs(client: TestClient) -> None:
    health = client.get("/health").json()
    assert (health["status"], health["entries"], health["unavailable"]) == ("ok", 4, {})
    assert health["queue"]["workers"] == 1 and health["results"]["store"] == "disk"
    entries = {e["name"]: e for e in client.get("/api/entries").json()}
    assert {n: e["kind"] for n, e in entries.items()} == {
        "gan": "flipad",
        "family": "keyed",
        "dtrak": "trak",
        "sim": "similarity",
    }
    assert all(e["loaded"] for e in entries.values())
    examples = client.get("/api/examples").json()
    assert [e["name"] for e in examples] == ["digit_00000", "digit_00001"]
    assert client.get(examples[0]["image"]).headers["content-type"] == "image/png"
    assert "/api/attribute" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "Check an image" in page.text and "dtrak" in page.text


def test_attribute_upload_gives_every_answer_and_a_page(client: TestClient, workspace: Path) -> None:
    response = client.post("/api/attribute", files={"file": ("digit.png", _digit_png(workspace), "image/png")})
    assert response.status_code == 200, response.text
    result = response.json()
    answers = {a["name"]: a for a in result["entries"]}
    flipad = answers["gan"]
    assert flipad["attributed"] == (flipad["score"] >= flipad["threshold"])
    assert answers["family"]["user"] in {"user-0", "user-1", "none", "ambiguous"}
    trak = answers["dtrak"]
    assert len(trak["positive"]) == 8 and len(trak["negative"]) == 4
    scores = [t["score"] for t in trak["positive"]]
    assert scores == sorted(scores, reverse=True)
    assert trak["negative"][0]["score"] <= scores[-1]
    assert 0 < sum(t["share"] for t in trak["positive"]) <= 1 + 1e-9
    sim = answers["sim"]
    shares = [t["share"] for t in sim["positive"]]
    assert len(shares) == 8 and shares == sorted(shares, reverse=True)
    assert sim["remaining_share"] == pytest.approx(1 - sum(shares), abs=1e-6)
    assert sim["negative"] == []
    # the same image is analysed once, but each request gets its own id and source; page, JSON, images served
    again = client.post("/api/attribute", files={"file": ("x.png", _digit_png(workspace), "image/png")}).json()
    assert again["id"] != result["id"] and again["source"] == "x.png" and again["timing"]["cached"]
    assert again["entries"] == result["entries"]
    assert client.get(f"/api/results/{result['id']}").json()["entries"] == result["entries"]
    page = client.get(result["url"])
    assert page.status_code == 200 and "Most positive influence" in page.text and "not made by gan" in page.text
    assert client.get(f"/api/results/{result['id']}/query.png").content.startswith(b"\x89PNG")
    thumb = client.get(trak["positive"][0]["image"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (96, 96)


def test_example_endpoint(client: TestClient) -> None:
    result = client.post("/api/attribute/example/digit_00001").json()
    assert result["source"] == "example digit_00001" and len(result["entries"]) == 4


def test_wrong_size_and_channels_are_converted_and_said(client: TestClient) -> None:
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[5:15, 10:20] = 255
    result = client.post("/api/attribute", files={"file": ("big.png", _png(rgb), "image/png")}).json()
    notes = result["entries"][0]["notes"]
    assert "resized from 30x20 to 8x8 (centre-cropped to a square)" in notes and "converted to grayscale" in notes


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"this is not an image at all", 400, "not an image"),
        (b"GIF89a" + b"\x00" * 20, 400, "PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100_000, 413, "larger than 0.05 MB"),
    ],
)
def test_bad_uploads_get_clear_4xx(client: TestClient, data: bytes, status: int, message: str) -> None:
    response = client.post("/api/attribute", files={"file": ("f.png", data, "image/png")})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_truncated_png(client: TestClient, workspace: Path) -> None:
    data = _png(np.full((64, 64), 128, dtype=np.uint8) + np.arange(64, dtype=np.uint8)[None])
    response = client.post("/api/attribute", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert response.status_code == 400 and "truncated or corrupt" in response.json()["error"]


def test_huge_dimensions_refused_before_decoding(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # tiny file, 25M pixels
    response = client.post("/api/attribute", files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400 and "5000x5000" in response.json()["error"]


def test_missing_field_unknown_names_and_traversal(client: TestClient) -> None:
    response = client.post("/api/attribute", data={"other": "x"})
    assert response.status_code == 422 and "form field 'file'" in response.json()["error"]
    for url in (
        "/api/entries/nope/train/0.png",
        "/api/entries/gan/train/0.png",  # a FLIPAD entry has no training images
        "/api/entries/dtrak/train/40.png",
        "/api/entries/..%2F..%2Fworkspace.json/train/0.png",
        "/api/results/../../workspace.json",
        "/api/results/0123456789abcdef",
        "/api/examples/..%2Fworkspace.png",
        "/results/not-an-id",
        "/no/such/page",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "error" in response.json(), url
    assert client.post("/api/attribute/example/..%2Fworkspace").status_code == 404
    assert client.get("/api/entries/dtrak/train/minus.png").status_code == 422


def test_a_failing_entry_is_reported_not_fatal(tiny_workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(tiny_workspace, ws)
    manifest = (ws / "workspace.json").read_text()
    (ws / "workspace.json").write_text(manifest.replace('"kind": "keyed"', '"kind": "future-kind"'))
    with pytest.raises(Exception, match="unknown kind 'future-kind'"):
        create_app(ws)
