"""``genprov serve``: the provenance service (FastAPI) and its browser page.

Endpoints (OpenAPI at ``/docs``):

* ``GET /`` the page: upload an image or pick an example; ``GET /results/{id}`` one answer as a page
  (linkable, printable);
* ``GET /health``; ``GET /api/entries``; ``GET /api/examples``;
* ``POST /api/attribute`` (multipart form field ``file``) and ``POST /api/attribute/example/{name}``: ask
  every workspace entry about the image; the answer is saved under ``WORKSPACE/results/{id}`` (``id`` =
  the first 16 hex digits of the image bytes' SHA-256, so the same image gets the same page);
* ``GET /api/results/{id}``; ``GET /api/results/{id}/query.png``; ``GET /api/examples/{name}.png``;
  ``GET /api/entries/{name}/train/{index}.png`` (a training image of a data-attribution entry).

Every error is a JSON body ``{"error": message}`` with a 4xx status saying what to change (5xx only for
a bug, without a stack trace); the service reads no path from a request: names are checked against the
workspace, so only files inside it are ever served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from genprov.app.engine import ProvenanceEngine
from genprov.app.workspace import Workspace, check_name
from genprov.data import decode_image, to_uint8
from genprov.exceptions import ConfigError, DataError
from genprov.utils.io import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "ServiceError", "create_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10.0
_RESULT_ID = re.compile(r"^[0-9a-f]{16}$")
_THUMB_PX = 96


class ServiceError(Exception):
    """An error answered with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(x: np.ndarray) -> bytes:
    """PNG of one (C, H, W) image in [-1, 1], upscaled (nearest) to about ``_THUMB_PX`` pixels."""
    import torch

    pixels = to_uint8(torch.from_numpy(x)[None])[0]
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = max(1, _THUMB_PX // max(image.size))
    return _png(image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST))


def create_app(workspace: str | Path | Workspace, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> FastAPI:
    """The service over ``workspace`` (a folder or an open :class:`Workspace`).

    Args:
        workspace: The workspace (opened and verified here).
        max_upload_mb: Largest accepted upload in MB.
    """
    if max_upload_mb <= 0:
        raise ConfigError(f"max_upload_mb must be positive; got {max_upload_mb}.")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    engine = ProvenanceEngine.load(ws)
    limit = int(max_upload_mb * 1024 * 1024)
    templates = Environment(loader=PackageLoader("genprov.app", "templates"), autoescape=select_autoescape())
    train_cache: dict[str, np.ndarray] = {}
    app = FastAPI(
        title="genprov provenance service",
        description="Which model made this image, and which training images shaped it.",
        version="1",
    )

    # ------------------------------------------------------------------------------------- errors

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "Not found: see /docs for the endpoints." if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        missing = [".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors()]
        return JSONResponse(
            {
                "error": f"Bad request: check {', '.join(missing) or 'the fields'} (send the image as form field 'file')."
            },
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "Internal error; the server logged it. Try another image."}, status_code=500)

    # ------------------------------------------------------------------------------------- helpers

    def entry_or_404(name: str) -> Any:
        try:
            check_name(name)
            return ws.entry(name)
        except (ConfigError, KeyError):
            raise ServiceError(404, f"Unknown workspace entry {name!r}; GET /api/entries lists them.") from None

    def ask(data: bytes, source: str) -> dict[str, Any]:
        try:
            image = decode_image(data, name=source)
        except DataError as err:
            raise ServiceError(400, str(err)) from None
        result_id = hashlib.sha256(data).hexdigest()[:16]
        folder = ws.results_dir / result_id
        if (folder / "result.json").is_file():
            return read_json(folder / "result.json")
        answer = engine.analyze(image)
        result = {
            "id": result_id,
            "url": f"/results/{result_id}",
            "source": source,
            "image": {"width": image.width, "height": image.height, "mode": image.mode},
            **answer,
        }
        atomic_write_bytes(folder / "query.png", _png(image))
        atomic_write_json(folder / "result.json", result)
        return result

    def stored_result(result_id: str) -> dict[str, Any]:
        path = ws.results_dir / result_id / "result.json"
        if not _RESULT_ID.match(result_id) or not path.is_file():
            raise ServiceError(404, f"No result {result_id!r}; results are created by POST /api/attribute.")
        return read_json(path)

    def example_path(name: str) -> Path:
        found = {p.stem: p for p in ws.examples()}
        if name not in found:
            raise ServiceError(404, f"No example {name!r}; GET /api/examples lists them.")
        return found[name]

    # ------------------------------------------------------------------------------------ endpoints

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what is loaded."""
        return {"status": "ok", "entries": len(engine.analyzers), "unavailable": engine.errors}

    @app.get("/api/entries")
    def entries() -> list[dict[str, Any]]:
        """The workspace entries: name, kind, facts, and whether they loaded."""
        return [
            {
                "name": e.name,
                "kind": e.kind,
                "info": e.info,
                "loaded": e.name in engine.analyzers,
                "error": engine.errors.get(e.name),
            }
            for e in ws.entries
        ]

    @app.get("/api/examples")
    def examples() -> list[dict[str, str]]:
        """Bundled example images."""
        return [{"name": p.stem, "image": f"/api/examples/{p.stem}.png"} for p in ws.examples()]

    @app.get("/api/examples/{name}.png")
    def example_image(name: str) -> Response:
        """An example image."""
        return Response(example_path(name).read_bytes(), media_type="image/png")

    @app.post("/api/attribute")
    async def attribute(file: UploadFile = File(..., description="The image (PNG, JPEG, ...).")) -> dict[str, Any]:
        """Ask every workspace entry about an uploaded image."""
        chunks, size = [], 0
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"The upload is larger than {max_upload_mb:g} MB; send a smaller image.")
            chunks.append(chunk)
        return ask(b"".join(chunks), file.filename or "the upload")

    @app.post("/api/attribute/example/{name}")
    def attribute_example(name: str) -> dict[str, Any]:
        """Ask every workspace entry about a bundled example."""
        return ask(example_path(name).read_bytes(), f"example {name}")

    @app.get("/api/results/{result_id}")
    def result_json(result_id: str) -> dict[str, Any]:
        """A stored answer."""
        return stored_result(result_id)

    @app.get("/api/results/{result_id}/query.png")
    def result_image(result_id: str) -> Response:
        """The image a stored answer is about."""
        stored_result(result_id)
        return Response((ws.results_dir / result_id / "query.png").read_bytes(), media_type="image/png")

    @app.get("/api/entries/{name}/train/{index}.png")
    def train_image(name: str, index: int) -> Response:
        """Training image ``index`` of a data-attribution entry."""
        entry = entry_or_404(name)
        if entry.kind not in ("trak", "similarity"):
            raise ServiceError(404, f"Entry {name!r} ({entry.kind}) has no training images.")
        if name not in train_cache:
            train_cache[name] = ws.train_images(name).numpy()
        images = train_cache[name]
        if not 0 <= index < len(images):
            raise ServiceError(404, f"Entry {name!r} has training images 0..{len(images) - 1}; got {index}.")
        return Response(_thumbnail(images[index]), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The upload page."""
        return templates.get_template("index.html").render(
            entries=entries(), examples=examples(), max_upload_mb=max_upload_mb
        )

    @app.get("/results/{result_id}", response_class=HTMLResponse)
    def result_page(result_id: str) -> str:
        """One answer as a page."""
        return templates.get_template("result.html").render(result=stored_result(result_id))

    return app
