"""Load test of the provenance service: concurrent queries against a similarity index and a TRAK store.

A workspace with two entries is built in a temporary folder: a feature-similarity index (raw pixels) over
10,000 MNIST training images (digits repeated with shifts when MNIST is not in ``$GENPROV_DATA`` or
``../shared/data``) and a D-TRAK store of a tiny DDPM over 400 digits. The service runs in this process
(uvicorn on 127.0.0.1, one worker) and 50 clients post 50 distinct images at once to ``/api/attribute``
(distinct, so no answer comes from the result cache). Reported: throughput, latency percentiles and errors
(goal: none). Analyses are serialised by the engine's lock, so latency grows with the queue while
throughput stays that of one analysis at a time.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

N_REQUESTS = 50
CONCURRENCY = 50


def _data_root() -> Path | None:
    for candidate in (os.environ.get("GENPROV_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


def _workspace(folder: Path, n_index: int) -> tuple[Path, list[bytes], str]:
    from genprov.app.register import add_similarity, add_trak
    from genprov.app.workspace import Workspace
    from genprov.attribution.data import TRAKAttributor, TRAKConfig
    from genprov.data import load_dataset, to_uint8
    from genprov.experiments.similarity import build_similarity_index
    from genprov.models.diffusion import DDPMConfig
    from genprov.models.training import default_train_config, train_ddpm

    root = _data_root()
    ws = Workspace.create(folder / "ws")
    if root is not None:
        spec = {"name": "mnist", "split": "train", "n": n_index, "seed": 0, "resize": None, "data_root": str(root)}
        source = f"{n_index} MNIST training images (28x28)"
        queries = load_dataset("mnist", split="test", n=N_REQUESTS, seed=1, data_root=root).images
    else:  # pragma: no cover - without the shared data
        spec = {"name": "digits", "split": "train", "n": None, "seed": 0, "resize": None, "data_root": None}
        source = "1,437 digits (MNIST not found)"
        queries = load_dataset("digits", split="test", n=N_REQUESTS, seed=1).images
    build_similarity_index("pixels", folder / "sim", spec)
    add_similarity(ws, "similarity", folder / "sim")

    digits = load_dataset("digits", n=400, seed=0)
    cfg = DDPMConfig.preset("tiny", image_size=8, channels=1)
    ddpm = train_ddpm(cfg, default_train_config(cfg, n_steps=50, batch_size=32), digits, folder / "ddpm")
    config = TRAKConfig(output_function="squared-l2-norm", proj_dim=512)
    attributor = TRAKAttributor(ddpm.model, config=config).fit(digits.images, store=folder / "store")
    assert attributor.store_ is not None
    attributor.store_.update_info(model=str(folder / "ddpm"), trak_config=config.to_dict(), image_size=8, channels=1)
    add_trak(ws, "d-trak", folder / "store", train=digits.images)

    from PIL import Image

    pngs = []
    for pixels in to_uint8(queries):
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0]).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return ws.folder, pngs, source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fire(url: str, images: list[bytes]) -> tuple[list[float], list[str], float]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, data: bytes) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                response = await client.post(url, files={"file": ("q.png", data, "image/png")})
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:80]}")
            except httpx.HTTPError as err:
                errors.append(type(err).__name__)
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, data) for data in images))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def run(quick: bool) -> str:
    """Build the workspace, serve it, fire the queries; return the Markdown section."""
    import uvicorn

    from genprov.app.server import create_app

    torch.set_num_threads(1)
    n_index = 2000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws, pngs, source = _workspace(Path(tmp), n_index)
        build_s = time.perf_counter() - t0
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(ws), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        single, _, _ = asyncio.run(_fire(base + "/api/attribute", [pngs[0]]))  # warm-up (cached afterwards)
        latencies, errors, wall = asyncio.run(_fire(base + "/api/attribute", [*pngs[1:], pngs[0][: len(pngs[0]) // 2]]))
        server.should_exit = True
        thread.join(timeout=10)
    lat = np.array(latencies)
    # the last image is deliberately corrupt: it must get a 400, not an error of the service
    bad = [e for e in errors if not e.startswith("400")]
    return "\n".join(
        [
            "### Provenance service under load (bench_service)",
            "",
            f"Workspace: a similarity index (raw pixels, exact search) over {source} and a D-TRAK store (tiny "
            f"8x8 DDPM, 400 digits, k=512); built in {build_s:.0f} s. {len(pngs)} requests from {CONCURRENCY} "
            "concurrent clients (httpx) to `POST /api/attribute` on one uvicorn worker, each a distinct MNIST "
            "test digit; the last one is a corrupt PNG that must get a 400. Warm single request: "
            f"{single[0]:.2f} s.",
            "",
            "| requests | concurrency | wall (s) | throughput (req/s) | p50 latency (s) | p99 latency (s) | max (s) "
            "| 400s (expected 1) | other errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {len(lat)} | {CONCURRENCY} | {wall:.1f} | {len(lat) / wall:.2f} | {np.percentile(lat, 50):.2f} "
            f"| {np.percentile(lat, 99):.2f} | {lat.max():.2f} | {len(errors) - len(bad)} | {len(bad)} |",
            "",
        ]
    )


if __name__ == "__main__":
    print(run(quick=False))
