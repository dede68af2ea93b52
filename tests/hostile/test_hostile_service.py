"""Hostile use of the provenance service (issue 13): every endpoint, every class of bad request.

Each case asserts the exact status and a message naming the problem (or a correct answer), and that the
workspace's own files (manifest, entries, examples) are byte-for-byte unchanged. The read-only workspace
runs in a subprocess as uid 65534 (root ignores permission bits), the full disk on a real 8 KB tmpfs;
both skip with the reason where the machine does not allow them. Concurrency is checked without any
wall-clock assertion: an analysis blocks on an event while the test asks ``/health`` and fills the queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from genprov.app import engine as engine_module
from genprov.app.engine import ProvenanceEngine
from genprov.app.register import add_similarity
from genprov.app.server import MAX_FILENAME_CHARS, create_app
from genprov.app.workspace import Workspace
from genprov.cli.main import app as cli
from genprov.exceptions import ConfigError

LIMIT_MB = 0.05  # the module client's upload limit (52,428 bytes)


# ---------------------------------------------------------------------------------------------- helpers


def _own_files(ws: Path) -> dict[str, str]:
    """SHA-256 of every workspace file that is not an answer (manifest, entries, examples)."""
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.rglob("*"))
        if p.is_file() and "results" not in p.relative_to(ws).parts
    }


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _digit(i: int = 0) -> bytes:
    """A distinct 12x12 grayscale PNG per ``i`` (distinct bytes: no cache hit between them)."""
    rng = np.random.default_rng(i)
    return _encode(Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)))


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _upload(client: TestClient, data: bytes, filename: str = "q.png") -> httpx.Response:
    return client.post("/api/attribute", files={"file": (filename, data, "image/png")})


def _error(response: httpx.Response) -> str:
    return str(response.json()["error"])


def _asgi_post(app: FastAPI, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, dict[str, str], int]:
    """POST to ``/api/attribute`` straight through ASGI; (status, headers, how many body chunks the app pulled)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/attribute",
        "raw_path": b"/api/attribute",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), {k.decode(): v.decode() for k, v in start["headers"]}, pulled


def _endless_upload() -> Iterator[bytes]:
    """A multipart body whose file part never ends (64 KB chunks)."""
    yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    while True:
        yield b"\x89" * 65536


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("hostile-service") / "ws"
    shutil.copytree(tiny_workspace, copy)
    return copy


@pytest.fixture(scope="module")
def service(ws: Path) -> FastAPI:
    return create_app(ws, max_upload_mb=LIMIT_MB)


@pytest.fixture(scope="module")
def client(service: FastAPI) -> TestClient:
    return TestClient(service, raise_server_exceptions=False)


@pytest.fixture(autouse=True)
def _workspace_untouched(ws: Path) -> Iterator[None]:
    before = _own_files(ws)
    yield
    assert _own_files(ws) == before, "the workspace's own files changed"


@pytest.fixture
def own_ws(tiny_workspace: Path, tmp_path: Path) -> Path:
    """A private copy for cases that change the workspace."""
    copy = tmp_path / "ws"
    shutil.copytree(tiny_workspace, copy)
    return copy


# --------------------------------------------------------------------------------------- /health, HEAD, 405


def test_health_reports_entries_queue_and_result_store(client: TestClient, ws: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["entries"] == 4 and health["unavailable"] == {}
    assert health["queue"] == {"workers": 1, "running": 0, "waiting": 0, "capacity": 129}
    assert health["results"]["store"] == "disk" and health["results"]["folder"] == str(ws / "results")


@pytest.mark.parametrize(
    "url",
    [
        "/health",
        "/api/entries",
        "/api/examples",
        "/api/examples/digit_00000.png",
        "/api/entries/dtrak/train/0.png",
        "/",
    ],
)
def test_head_answers_every_get_route_without_a_body(client: TestClient, url: str) -> None:
    got, head = client.get(url), client.head(url)
    assert got.status_code == head.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("POST", "/health", "GET"),
        ("DELETE", "/api/entries", "GET"),
        ("PUT", "/api/examples/digit_00000.png", "GET"),
        ("GET", "/api/attribute", "POST"),
        ("GET", "/api/attribute/example/digit_00000", "POST"),
        ("POST", "/", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(client: TestClient, method: str, url: str, allow: str) -> None:
    response = client.request(method, url)
    assert response.status_code == 405 and response.headers["allow"] == allow
    assert _error(response) == f"{method} is not allowed on {url}; use {allow}."


def test_an_entry_that_fails_to_load_is_reported_not_silent(own_ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ws: Workspace, entry: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(ws.entry_dir(entry.name) / "index" / ".lock"))

    monkeypatch.setitem(engine_module.ANALYZERS, "similarity", broken)
    client = TestClient(create_app(own_ws))
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["entries"] == 3
    assert "Permission denied" in health["unavailable"]["sim"] and ".lock" in health["unavailable"]["sim"]
    sim = next(e for e in client.get("/api/entries").json() if e["name"] == "sim")
    assert sim["loaded"] is False and "PermissionError" in sim["error"]
    answer = _upload(client, _digit()).json()
    assert "sim" in answer["unavailable"] and [e["name"] for e in answer["entries"]] == ["gan", "family", "dtrak"]


# -------------------------------------------------------------------------------- /api/attribute: privacy


def test_same_bytes_different_uploaders_each_get_their_own_answer(client: TestClient) -> None:
    data = _digit(100)
    alice = _upload(client, data, "alice-private-photo.png").json()
    bob = _upload(client, data, "bob.png").json()
    assert alice["source"] == "alice-private-photo.png" and bob["source"] == "bob.png"
    assert alice["id"] != bob["id"] and alice["entries"] == bob["entries"]
    assert (alice["timing"]["cached"], bob["timing"]["cached"]) == (False, True)
    assert client.get(f"/api/results/{bob['id']}").json()["source"] == "bob.png"
    page = client.get(bob["url"]).text
    assert "bob.png" in page and "alice" not in page
    assert "alice" not in json.dumps(bob)


def test_filename_is_escaped_and_stripped_of_folders(client: TestClient) -> None:
    answer = _upload(client, _digit(101), "C:\\fakepath\\<img src=x onerror=alert(1)>.png").json()
    assert answer["source"] == "<img src=x onerror=alert(1)>.png"
    page = client.get(answer["url"]).text
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page and "<img src=x" not in page
    assert _upload(client, _digit(101), "../../etc/passwd").json()["source"] == "passwd"


def test_example_answer_has_its_own_source_and_timing(client: TestClient) -> None:
    first = client.post("/api/attribute/example/digit_00000").json()
    second = client.post("/api/attribute/example/digit_00000").json()
    assert first["source"] == second["source"] == "example digit_00000" and first["id"] != second["id"]
    assert set(first["timing"]) == {"queued_s", "analysis_s", "cached"} and second["timing"]["cached"] is True


def test_unknown_example_is_404(client: TestClient) -> None:
    response = client.post("/api/attribute/example/nope")
    assert response.status_code == 404 and _error(response) == "No example 'nope'; GET /api/examples lists them."
    response = client.get("/api/examples/nope.png")
    assert response.status_code == 404 and "No example 'nope'" in _error(response)


# ----------------------------------------------------------------------------------- /api/attribute: 4xx


def test_header_claiming_50000x50000_pixels_is_400(client: TestClient) -> None:
    response = _upload(client, _png_header(50000, 50000), "bomb.png")
    assert response.status_code == 400
    assert all(word in _error(response) for word in ("bomb.png", "pixels", "smaller image")), _error(response)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("RGBA", "PNG"), ("1", "PNG"), ("RGB", "PNG")],
)
def test_every_image_mode_is_analysed_and_stored_small(client: TestClient, mode: str, fmt: str) -> None:
    rng = np.random.default_rng(len(mode))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode)
    response = _upload(client, _encode(image, fmt), f"img.{fmt.lower()}")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image"] == {"width": 30, "height": 20, "mode": image.mode}
    assert all("error" not in e for e in answer["entries"]), answer["entries"]
    stored = Image.open(io.BytesIO(client.get(f"/api/results/{answer['id']}/query.png").content))
    assert stored.mode in ("L", "RGB") and max(stored.size) == 8  # the entries analyse at 8x8


def test_a_large_image_is_stored_at_the_analysed_size(client: TestClient, ws: Path) -> None:
    rng = np.random.default_rng(7)
    data = _encode(Image.fromarray(rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)), "JPEG")
    answer = _upload(client, data, "photo.jpg").json()
    query = ws / "results" / answer["id"] / "query.png"
    assert Image.open(query).size == (7, 8) and query.stat().st_size < len(data)


def test_filename_of_5000_characters_is_400(client: TestClient) -> None:
    response = _upload(client, _digit(102), "a" * 4996 + ".png")
    assert response.status_code == 400
    assert _error(response) == (
        f"The upload's filename is 5000 characters long; at most {MAX_FILENAME_CHARS} are allowed: rename the file."
    )


def test_filename_with_control_characters_is_400(client: TestClient) -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="\x1b[31mred.png"\r\n\r\n'
        + _digit(103)
        + b"\r\n--B--\r\n"
    )
    response = client.post("/api/attribute", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert response.status_code == 400
    assert _error(response) == "The upload's filename contains control characters; rename the file."


def test_declared_content_length_over_the_limit_is_413_before_reading(service: FastAPI) -> None:
    headers = {"content-type": "multipart/form-data; boundary=B", "content-length": str(300 * 2**20)}
    status, _, pulled = _asgi_post(service, headers, _endless_upload())
    assert (status, pulled) == (413, 0)


@pytest.mark.parametrize("declared", [None, "200"], ids=["no-length", "lying-length"])
def test_reading_stops_at_the_limit_when_the_length_is_absent_or_lies(service: FastAPI, declared: str | None) -> None:
    headers = {"content-type": "multipart/form-data; boundary=B"}
    if declared:
        headers["content-length"] = declared
    status, _, pulled = _asgi_post(service, headers, _endless_upload())
    assert status == 413 and pulled <= 3  # header chunk + at most two 64 KB chunks, never the whole body


def test_upload_over_the_limit_through_the_client_is_413(client: TestClient) -> None:
    response = _upload(client, b"\x89PNG\r\n\x1a\n" + b"\0" * 100_000)
    assert (
        response.status_code == 413 and _error(response) == "The upload is larger than 0.05 MB; send a smaller image."
    )


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"content": b"{}", "headers": {"content-type": "application/json"}},
            415,
            "'application/json' is not accepted",
        ),
        ({"data": {"other": "x"}}, 422, "form field 'file'"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 422, "got fields 'other'"),
        (
            {"files": [("file", ("a.png", b"x", "image/png")), ("file", ("b.png", b"y", "image/png"))]},
            422,
            "several files",
        ),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400, "malformed"),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "no boundary"),
        ({"files": {"file": ("e.png", b"", "image/png")}}, 400, "e.png is empty"),
    ],
    ids=["json", "urlencoded", "other-field", "two-files", "garbage", "no-boundary", "empty"],
)
def test_malformed_requests_name_the_problem(
    client: TestClient, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/api/attribute", **kwargs)
    assert response.status_code == status and message in _error(response), response.text


# ---------------------------------------------------------------------------------- queue and /health


def test_health_answers_while_analyses_queue_and_a_full_queue_is_503(
    own_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, started = threading.Event(), threading.Event()
    original = ProvenanceEngine.analyze

    def blocking(self: ProvenanceEngine, image: Image.Image) -> dict[str, Any]:
        started.set()
        assert release.wait(60), "the test never released the analysis"
        return original(self, image)

    monkeypatch.setattr(ProvenanceEngine, "analyze", blocking)
    app = create_app(own_ws, workers=1, queue_size=1)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:

            def post(i: int) -> Any:
                return c.post("/api/attribute", files={"file": (f"{i}.png", _digit(200 + i), "image/png")})

            running = [asyncio.create_task(post(i)) for i in range(2)]
            for _ in range(6000):  # until one analysis runs and one waits (bounded, no clock assertion)
                queue = (await c.get("/health")).json()["queue"]
                if (queue["running"], queue["waiting"]) == (1, 1):
                    break
                await asyncio.sleep(0.01)
            health = await c.get("/health")  # answered while both analyses are still pending
            busy = await post(9)
            release.set()
            return list(await asyncio.gather(*running)), health, busy

    try:
        done, health, busy = asyncio.run(scenario())
    finally:
        release.set()
    assert started.is_set() and health.status_code == 200
    assert health.json()["queue"] == {"workers": 1, "running": 1, "waiting": 1, "capacity": 2}
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1 and "busy" in _error(busy)
    assert [r.status_code for r in done] == [200, 200]
    queued = sorted(r.json()["timing"]["queued_s"] for r in done)
    assert queued[1] > 0  # the second waited for the first


def test_workers_and_queue_are_validated(own_ws: Path) -> None:
    with pytest.raises(ConfigError, match=r"workers \(--workers\) must be an integer >= 1; got 0"):
        create_app(own_ws, workers=0)
    with pytest.raises(ConfigError, match=r"max_upload_mb \(--max-upload-mb\) must be a positive number; got nan"):
        create_app(own_ws, max_upload_mb=float("nan"))


# ---------------------------------------------------------------------------------- results, retention


def test_unknown_and_malformed_result_ids_are_404(client: TestClient) -> None:
    for url in ("/api/results/0123456789abcdef", "/api/results/../../workspace.json", "/results/not-an-id"):
        response = client.get(url)
        assert response.status_code == 404, url
    response = client.get("/api/results/0123456789abcdef/query.png")
    assert response.status_code == 404 and "No result '0123456789abcdef'" in _error(response)


def test_retention_by_size_removes_the_least_recently_used(own_ws: Path) -> None:
    probe = TestClient(create_app(own_ws))
    one = _upload(probe, _digit(300)).json()
    size = sum(p.stat().st_size for p in (own_ws / "results" / one["id"]).iterdir())
    shutil.rmtree(own_ws / "results")
    client = TestClient(create_app(own_ws, results_max_mb=2.5 * size / 2**20))  # room for two answers
    first, second = (_upload(client, _digit(301 + i)).json() for i in range(2))
    assert client.get(f"/api/results/{first['id']}").status_code == 200  # first is now the most recently used
    third = _upload(client, _digit(303)).json()
    response = client.get(f"/api/results/{second['id']}")
    assert response.status_code == 404 and "least recently used removed first" in _error(response)
    assert client.get(f"/results/{first['id']}").status_code == 200
    assert client.get(f"/api/results/{third['id']}/query.png").status_code == 200
    assert sorted(p.name for p in (own_ws / "results").iterdir()) == sorted([first["id"], third["id"]])
    assert client.get("/health").json()["results"]["count"] == 2


def test_retention_by_age_removes_old_answers_at_start(own_ws: Path) -> None:
    client = TestClient(create_app(own_ws))
    old, new = (_upload(client, _digit(310 + i)).json() for i in range(2))
    two_days_ago = os.path.getmtime(own_ws / "workspace.json") - 2 * 86400
    for path in (own_ws / "results" / old["id"]).iterdir():
        os.utime(path, (two_days_ago, two_days_ago))
    client = TestClient(create_app(own_ws, results_max_age_h=24))
    assert client.get(f"/api/results/{old['id']}").status_code == 404
    assert not (own_ws / "results" / old["id"]).exists()
    assert client.get(f"/api/results/{new['id']}").json()["id"] == new["id"]


def test_results_dir_that_cannot_be_written_is_refused(own_ws: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"results_dir \(--results-dir\): .*file/results is not writable"):
        create_app(own_ws, results_dir=tmp_path / "file" / "results")


def test_full_disk_keeps_answers_in_memory_and_says_so(own_ws: Path, tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the full-disk case needs one")
    try:
        client = TestClient(create_app(own_ws, results_dir=mount))
        with open(mount / "filler", "wb", buffering=0) as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 1024)
            except OSError:
                pass
        answer = _upload(client, _digit(320))
        assert answer.status_code == 200, answer.text
        result_id = answer.json()["id"]
        note = client.get("/health").json()["results"]["note"]
        assert f"writing {mount / result_id} failed" in note and "kept in memory" in note
        assert client.get(f"/api/results/{result_id}").json()["source"] == "q.png"
        assert client.get(f"/api/results/{result_id}/query.png").content.startswith(b"\x89PNG")
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]  # no partial answer left behind
    finally:
        subprocess.run(["umount", str(mount)], check=False)


_READ_ONLY_SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
from genprov.app.server import create_app
ws, image, results_dir = sys.argv[1], open(sys.argv[2], "rb").read(), (sys.argv[3] if len(sys.argv) > 3 else None)
client = TestClient(create_app(ws, results_dir=results_dir))
answer = client.post("/api/attribute", files={"file": ("ro.png", image, "image/png")})
again = client.get("/api/results/" + answer.json().get("id", "x")) if answer.status_code == 200 else answer
print(json.dumps({"health": client.get("/health").json(), "status": answer.status_code, "answer": answer.json(),
                  "again": again.status_code, "entries": client.get("/api/entries").json()}))
"""


def _run_unprivileged(args: list[str], home: Path) -> dict[str, Any]:
    """Run the read-only script as uid 65534 (root writes through permission bits); skip where impossible."""
    prefix: list[str] = []
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("the read-only case needs setpriv (util-linux) to drop root, which ignores permission bits")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1", "GENPROV_PROGRESS": "0"}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _READ_ONLY_SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def read_only_ws(tiny_workspace: Path) -> Iterator[tuple[Path, Path]]:
    """A world-readable, nobody-writable copy of the workspace (outside pytest's private tmp) and a scratch dir."""
    top = Path(tempfile.mkdtemp(prefix="genprov-ro-", dir="/tmp"))
    try:
        ws = top / "ws"
        shutil.copytree(tiny_workspace, ws)
        (top / "query.png").write_bytes(_digit(400))
        home = top / "home"
        home.mkdir()
        if os.getuid() == 0:
            os.chown(home, 65534, 65534)
        for path in [top, *top.rglob("*")]:
            if path.is_dir() and path != home:
                path.chmod(0o555)
            elif path.is_file():
                path.chmod(0o444)
        yield ws, home
    finally:
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(top)


def test_read_only_workspace_answers_from_memory(read_only_ws: tuple[Path, Path]) -> None:
    ws, home = read_only_ws
    before = _own_files(ws)
    out = _run_unprivileged([str(ws), str(ws.parent / "query.png")], home)
    assert out["status"] == 200, out["answer"]
    assert out["health"]["unavailable"] == {} and out["health"]["status"] == "ok"  # TRAK store read without a lock
    assert all(e["loaded"] for e in out["entries"])
    assert [e["name"] for e in out["answer"]["entries"]] == ["gan", "family", "dtrak", "sim"]
    assert all("error" not in e for e in out["answer"]["entries"])
    results = out["health"]["results"]
    assert results["store"] == "memory" and "is not writable" in results["note"] and "--results-dir" in results["note"]
    assert out["again"] == 200
    assert _own_files(ws) == before and not (ws / "results").exists()


def test_read_only_workspace_with_a_writable_results_dir(read_only_ws: tuple[Path, Path]) -> None:
    ws, home = read_only_ws
    out = _run_unprivileged([str(ws), str(ws.parent / "query.png"), str(home / "answers")], home)
    assert out["status"] == 200 and out["health"]["results"]["store"] == "disk"
    assert (home / "answers" / out["answer"]["id"] / "result.json").is_file()


# ------------------------------------------------------------------------------ workspace changes


def test_cached_answers_follow_entries_removed_and_added(own_ws: Path, tiny_workspace: Path) -> None:
    client = TestClient(create_app(own_ws))
    data = _digit(500)
    before = _upload(client, data).json()
    assert [e["name"] for e in before["entries"]] == ["gan", "family", "dtrak", "sim"]
    Workspace.open(own_ws).remove("sim")
    after_remove = _upload(client, data).json()
    assert [e["name"] for e in after_remove["entries"]] == ["gan", "family", "dtrak"]
    assert after_remove["timing"]["cached"] is False
    assert [e["name"] for e in client.get("/api/entries").json()] == ["gan", "family", "dtrak"]
    assert client.get("/api/entries/sim/train/0.png").status_code == 404
    add_similarity(Workspace.open(own_ws), "sim2", tiny_workspace.parent / "runs" / "sim")
    after_add = _upload(client, data).json()
    assert [e["name"] for e in after_add["entries"]] == ["gan", "family", "dtrak", "sim2"]
    assert after_add["timing"]["cached"] is False and client.get("/health").json()["entries"] == 4


def test_a_workspace_broken_while_serving_is_503_until_fixed(own_ws: Path) -> None:
    client = TestClient(create_app(own_ws))
    manifest = (own_ws / "workspace.json").read_bytes()
    (own_ws / "workspace.json").write_text('{"format": "something else"}')
    response = _upload(client, _digit(510))
    assert response.status_code == 503 and "changed and cannot be opened" in _error(response)
    assert client.get("/health").json()["status"] == "error"
    assert client.get("/api/entries").status_code == 503
    (own_ws / "workspace.json").write_bytes(manifest)
    assert _upload(client, _digit(510)).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


# -------------------------------------------------------------------------------- training images


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/api/entries/dtrak/train/minus.png", 422, "Bad request: index must be an integer; got 'minus'."),
        ("/api/entries/dtrak/train/1.5.png", 422, "Bad request: index must be an integer; got '1.5'."),
        ("/api/entries/dtrak/train/-1.png", 404, "Entry 'dtrak' has training images 0..39; got -1."),
        ("/api/entries/gan/train/0.png", 404, "Entry 'gan' (flipad) has no training images."),
        ("/api/entries/nope/train/0.png", 404, "Unknown workspace entry 'nope'; GET /api/entries lists them."),
    ],
)
def test_training_image_errors_name_the_problem(client: TestClient, url: str, status: int, message: str) -> None:
    response = client.get(url)
    assert response.status_code == status and _error(response) == message


# ------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "0"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--queue", "-1"], "--queue"),
        (["--max-upload-mb", "0"], "max_upload_mb (--max-upload-mb) must be a positive number; got 0.0."),
        (["--max-upload-mb", "nan"], "must be a positive number; got nan."),
        (["--results-max-mb", "-1"], "results_max_mb (--results-max-mb) must be a positive number"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(ws: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--workspace", str(ws), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- a manifest broken by hand or by an attacker


@pytest.mark.parametrize("manifest", ["{", "[]", "crafted"], ids=["not-json", "a-list", "entry-name-leaving-the-ws"])
def test_a_corrupt_or_crafted_manifest_while_serving_is_503_not_500(own_ws: Path, manifest: str) -> None:
    client = TestClient(create_app(own_ws), raise_server_exceptions=False)
    original = (own_ws / "workspace.json").read_bytes()
    if manifest == "crafted":
        data = json.loads(original)
        data["entries"][0]["name"] = "../../outside"
        manifest = json.dumps(data)
    (own_ws / "workspace.json").write_text(manifest)
    response = _upload(client, _digit(520))
    assert response.status_code == 503, response.text
    assert "changed and cannot be opened" in _error(response) and "workspace.json" in _error(response)
    assert client.get("/health").json()["status"] == "error"
    (own_ws / "workspace.json").write_bytes(original)
    assert _upload(client, _digit(520)).status_code == 200


def test_results_dir_holding_another_artefact_is_refused(ws: Path, tiny_workspace: Path) -> None:
    gan = tiny_workspace.parent / "runs" / "gan"
    before = _own_files(gan)
    result = CliRunner().invoke(cli, ["serve", "--workspace", str(ws), "--results-dir", str(gan)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert f"{gan} already holds a gan checkpoint" in text and "choose another --results-dir" in text
    assert _own_files(gan) == before
