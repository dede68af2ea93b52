"""A real browser against a real server: upload a digit on the page, wait for the answer, check it.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Playwright from pip; never a browser download.
Skips with the reason when Chromium or Playwright is missing (``make test`` installs Chromium first).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

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


@pytest.fixture(scope="module")
def server(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    from genprov.app.server import create_app

    ws = tmp_path_factory.mktemp("e2e") / "ws"
    shutil.copytree(tiny_workspace, ws)
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
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


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
