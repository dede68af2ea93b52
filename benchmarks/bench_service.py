"""Load test of the provenance service: 100 concurrent uploads against a similarity index and a TRAK store.

A workspace with two entries is built in a temporary folder: a feature-similarity index (raw pixels) over
10,000 MNIST training images (digits repeated with shifts when MNIST is not in ``$GENPROV_DATA`` or
``../shared/data``) and a D-TRAK store of a tiny DDPM over 400 digits. The service runs in this process
(uvicorn on 127.0.0.1 only, one analysis worker, queue of 128) and 100 clients post 100 distinct MNIST test
digits at once to ``/api/attribute`` (distinct, so no answer comes from the analysis cache), plus one corrupt
PNG that must get a 400. Meanwhile a client asks ``/health`` every 20 ms. Reported: throughput, latency
percentiles, ``/health`` latency during the load, how long requests queued, non-2xx answers (goal: none
unexpected) and the workspace's size before and after (answers are stored at the analysed size).

A second phase serves the same workspace with a deliberately small queue (4) and fires another 100
distinct uploads at once: the 503s with ``Retry-After`` there are expected (back-pressure), and every
request the service admitted must succeed.

A load test is one run by nature (its figures are percentiles over the requests of that run), so it is not
repeated; the 1-minute load average is read before the first phase and after each, and a spread above 0.5
between the readings after the phases flags the table (:func:`benchmarks.timing.load_note`).
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
from typing import Any

import numpy as np
import torch

from benchmarks.timing import load_average, load_note

N_REQUESTS = 100
SMALL_QUEUE = 4
HEALTH_EVERY_S = 0.02


def _data_root() -> Path | None:
    for candidate in (os.environ.get("GENPROV_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


def _workspace(folder: Path, n_index: int) -> tuple[Path, list[bytes], str]:
    from genprov.app.register import add_similarity, add_trak
    from genprov.app.workspace import Workspace
    from genprov.attribution.data import TRAKAttributor, TRAKConfig
    from genprov.attribution.data.index_folder import build_similarity_index
    from genprov.data import load_dataset, to_uint8
    from genprov.models.diffusion import DDPMConfig
    from genprov.models.training import default_train_config, train_ddpm

    root = _data_root()
    ws = Workspace.create(folder / "ws")
    if root is not None:
        spec = {"name": "mnist", "split": "train", "n": n_index, "seed": 0, "resize": None, "data_root": str(root)}
        source = f"{n_index} MNIST training images (28x28)"
        queries = load_dataset("mnist", split="test", n=N_REQUESTS + 1, seed=1, data_root=root).images
    else:  # pragma: no cover - without the shared data
        spec = {"name": "digits", "split": "train", "n": None, "seed": 0, "resize": None, "data_root": None}
        source = "1,437 digits (MNIST not found)"
        queries = load_dataset("digits", split="test", n=N_REQUESTS + 1, seed=1).images
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


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _Server:
    """uvicorn on 127.0.0.1 in a thread, serving ``create_app(workspace, **options)``."""

    def __init__(self, workspace: Path, **options: Any) -> None:
        import uvicorn

        from genprov.app.server import create_app

        self.port = _free_port()
        config = uvicorn.Config(create_app(workspace, **options), host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def _load(base: str, images: list[bytes]) -> dict[str, Any]:
    """Post every image at once while polling /health; latencies, statuses, timings, /health latencies."""
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    queued: list[float] = []
    health: list[float] = []
    failures: list[str] = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=len(images) + 8, max_keepalive_connections=len(images) + 8)

    async def one(client: httpx.AsyncClient, i: int, data: bytes) -> None:
        start = time.perf_counter()
        try:
            response = await client.post(base + "/api/attribute", files={"file": (f"q{i}.png", data, "image/png")})
            statuses.append(response.status_code)
            if response.status_code == 200:
                queued.append(response.json()["timing"]["queued_s"])
            elif response.status_code != 503:
                failures.append(f"{response.status_code}: {response.text[:100]}")
        except httpx.HTTPError as err:
            statuses.append(0)
            failures.append(type(err).__name__)
        latencies.append(time.perf_counter() - start)

    async def poll(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            start = time.perf_counter()
            response = await client.get(base + "/health")
            health.append(time.perf_counter() - start)
            if response.status_code != 200:
                failures.append(f"/health {response.status_code}")
            await asyncio.sleep(HEALTH_EVERY_S)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client, httpx.AsyncClient(timeout=60) as probe:
        poller = asyncio.create_task(poll(probe))
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i, data) for i, data in enumerate(images)))
        wall = time.perf_counter() - start
        done.set()
        await poller
    return {
        "latencies": np.array(latencies),
        "statuses": statuses,
        "queued": np.array(queued or [0.0]),
        "health": np.array(health),
        "failures": failures,
        "wall": wall,
    }


def _row(label: str, n: int, out: dict[str, Any], expected: str, expected_400: int) -> str:
    lat, health, statuses = out["latencies"], out["health"], out["statuses"]
    ok = sum(200 <= s < 300 for s in statuses)
    non2xx = len(statuses) - ok
    busy = statuses.count(503)
    bad = statuses.count(400)
    unexpected = len(out["failures"]) - min(expected_400, sum(f.startswith("400") for f in out["failures"]))
    return (
        f"| {label} | {n} | {out['wall']:.1f} | {ok / out['wall']:.2f} | {np.percentile(lat, 50):.2f} "
        f"| {np.percentile(lat, 99):.2f} | {np.percentile(out['queued'], 99):.2f} | {len(health)} "
        f"| {1000 * np.percentile(health, 50):.1f} | {1000 * np.percentile(health, 99):.1f} "
        f"| {1000 * health.max():.1f} | {non2xx} ({bad} x 400, {busy} x 503; expected: {expected}) | {unexpected} |"
    )


def run(quick: bool) -> str:
    """Build the workspace, serve it, fire the uploads; return the Markdown section."""
    torch.set_num_threads(1)
    n_index = 2000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws, pngs, source = _workspace(Path(tmp), n_index)
        build_s = time.perf_counter() - t0
        bytes_before = _folder_bytes(ws)
        corrupt = pngs[0][: len(pngs[0]) // 2]
        load_before = load_average()
        with _Server(ws, workers=1, queue_size=128) as base:
            warm = asyncio.run(_load(base, [pngs[N_REQUESTS]]))  # not among the timed uploads
            main = asyncio.run(_load(base, [*pngs[:N_REQUESTS], corrupt]))
        load_between = load_average()
        bytes_after = _folder_bytes(ws)
        results_bytes = _folder_bytes(ws / "results")
        flipped = []
        from PIL import Image

        for data in pngs[:N_REQUESTS]:  # distinct from phase 1: no analysis cache hit
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
            flipped.append(buffer.getvalue())
        with _Server(ws, workers=1, queue_size=SMALL_QUEUE) as base:
            small = asyncio.run(_load(base, flipped))
        load_after = load_average()
    header = (
        "| phase | uploads | wall (s) | throughput (2xx/s) | p50 latency (s) | p99 latency (s) | p99 queued (s) "
        "| /health calls | /health p50 (ms) | /health p99 (ms) | /health max (ms) | non-2xx | unexpected |"
    )
    return "\n".join(
        [
            "### Provenance service under load (bench_service)",
            "",
            f"Workspace: a similarity index (raw pixels, exact search) over {source} and a D-TRAK store (tiny "
            f"8x8 DDPM, 400 digits, k=512); built in {build_s:.0f} s. uvicorn on 127.0.0.1, one analysis worker. "
            f"Phase 1: queue of 128, {N_REQUESTS} distinct MNIST test digits plus one corrupt PNG (must get a 400) "
            f"posted at once by {N_REQUESTS + 1} concurrent httpx clients to `POST /api/attribute`, while another "
            f"client asks `/health` every {1000 * HEALTH_EVERY_S:.0f} ms. Phase 2: the same with a queue of "
            f"{SMALL_QUEUE} and {N_REQUESTS} other digits, where 503 + Retry-After is the expected answer to "
            f"whatever finds the queue full. Warm single request: {warm['latencies'][0]:.2f} s.",
            "",
            header,
            "| " + " | ".join("---" for _ in range(13)) + " |",
            _row("queue 128", N_REQUESTS + 1, main, "1 x 400", 1),
            _row(f"queue {SMALL_QUEUE}", N_REQUESTS, small, "503s", 0),
            "",
            f"Workspace bytes: {bytes_before:,} before, {bytes_after:,} after phase 1 ({results_bytes:,} in "
            f"results/: {N_REQUESTS + 1} answers with their query image stored at the analysed size).",
            "",
            load_note(load_before, load_after, (load_between, load_after)),
            "",
        ]
    )


if __name__ == "__main__":
    print(run(quick=False))
