"""A real browser against a real server: upload a digit on the page, wait for the answer, check it.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Playwright from pip; never a browser download.
Skips with the reason when Chromium or Playwright is missing (``make test`` installs Chromium first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PROMPT = "a photo of a horse"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    path = os.environ.get("GENPROV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip(f"Chromium not found at {path}: install Debian's 'chromium' package (make test tries apt-get)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(ws: Path) -> Iterator[str]:
    """``genprov serve`` on ``ws`` in a thread, on a free port: its URL."""
    import uvicorn

    from genprov.app.server import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(ws), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ws = tmp_path_factory.mktemp("e2e") / "ws"
    shutil.copytree(tiny_workspace, ws)
    with _serving(ws) as url:
        yield url


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A workspace with one pipeline entry: a FLIPAD detector of a tiny text-to-image pipeline's VAE (fitted in a
    few seconds by ``genprov flipad fit``), the pipeline copied with it."""
    import torch
    from typer.testing import CliRunner

    from genprov.cli.main import app
    from genprov.data import save_images
    from genprov.models.t2i import save_pipeline, tiny_pipeline

    root = tmp_path_factory.mktemp("e2e-pipeline")
    save_images(torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1, root / "real")
    pipeline = save_pipeline(tiny_pipeline(0), root / "pipe")
    fit = ["flipad", "fit", "--generator", str(pipeline), "--prompt", PROMPT, "--real", str(root / "real")]
    fit += ["--out", str(root / "det"), "--n-samples", "12", "--n-real", "12", "--sample-steps", "2"]
    fit += [
        "--set",
        "max_iter=10",
        "--set",
        "n_anchor=8",
        "--set",
        "detector.n_epochs=2",
        "--set",
        "detector.widths=[8]",
    ]
    add = ["workspace", "add", "flipad", "--workspace", str(root / "ws"), "--name", "sd"]
    add += ["--detector", str(root / "det"), "--generator", str(pipeline)]
    commands = [fit, add]
    for args in commands:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    with _serving(root / "ws") as url:
        yield url


def test_upload_on_the_page_shows_verdicts_and_gallery(server: str, tiny_workspace: Path, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    image = sorted((tiny_workspace / "examples").glob("*.png"))[0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            assert "genprov" in page.title()
            page.set_input_files("#file", str(image))
            page.click("#submit")
            page.wait_for_url("**/results/*", timeout=60_000)
            flipad = page.locator('.entry[data-kind="flipad"] .verdict')
            assert flipad.inner_text() in {"made by gan", "not made by gan"}
            keyed = page.locator('.entry[data-kind="keyed"] .verdict').inner_text()
            assert keyed in {"made by user-0", "made by user-1", "none", "ambiguous"}
            gallery = page.locator('.entry[data-kind="trak"] .gallery.positive img')
            assert gallery.count() == 8
            page.wait_for_function(
                "() => [...document.querySelectorAll('.gallery img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            shot = Path(os.environ.get("GENPROV_E2E_ARTIFACTS", tmp_path)) / "result-page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            # a bad upload shows the service's message on the page, and the server keeps answering
            page.goto(server + "/")
            bad = tmp_path / "bad.png"
            bad.write_bytes(b"not an image")
            page.set_input_files("#file", str(bad))
            page.click("#submit")
            page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
            assert "use a PNG or JPEG file" in page.inner_text("#error")
        finally:
            browser.close()


def test_a_pipeline_entry_answers_an_upload_with_its_prompt(pipeline_server: str, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    from PIL import Image

    image = tmp_path / "query.png"
    Image.new("RGB", (32, 32), (40, 120, 200)).save(image)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(pipeline_server + "/")
            assert "Prompt (optional)" in page.inner_text("#upload")
            page.set_input_files("#file", str(image))
            page.fill("#prompt", PROMPT)
            page.click("#submit")
            page.wait_for_url("**/results/*", timeout=60_000)
            assert page.locator("q").inner_text() == PROMPT
            entry = page.locator('.entry[data-kind="flipad"][data-name="sd"]')
            assert entry.locator(".verdict").inner_text() in {"made by sd", "not made by sd"}
            assert "FLIPAD score" in entry.inner_text() and "resized from 32x32 to 16x16" in entry.inner_text()
        finally:
            browser.close()
