"""``genprov serve``: the provenance service (FastAPI) and its browser page.

Endpoints (OpenAPI at ``/docs``; every ``GET`` also answers ``HEAD``):

* ``GET /`` the page: upload an image or pick an example; ``GET /results/{id}`` one answer as a page
  (linkable, printable);
* ``GET /health`` (at once, even under load: entries loaded and unavailable with the reason, the queue, where
  answers are kept); ``GET /api/entries``; ``GET /api/examples``;
* ``POST /api/attribute`` (multipart form field ``file``, and ``prompt``: the query's prompt, which TRAK entries of
  a text-to-image model need (422 without it), FLIPAD entries of a pipeline's VAE and similarity entries record in
  their answer, and the others ignore; the answer and its page show it) and
  ``POST /api/attribute/example/{name}`` (``?prompt=``): ask every workspace entry about the image. Each request gets its own answer and a new random ``id``; the
  answer says how long the request queued and how long the analysis took (``timing``);
* ``GET /api/results/{id}``; ``GET /api/results/{id}/query.png``; ``GET /api/examples/{name}.png``;
  ``GET /api/entries/{name}/train/{index}.png`` (a training image of a data-attribution entry).

Analyses run on worker threads (``workers``, each with its own copy of the models) behind a bounded queue
(``queue_size``); a request that finds it full gets 503 with ``Retry-After``. The analysis of an image is
cached by its bytes and the workspace manifest's hash, so identical uploads are analysed once and an entry
that is added, replaced or removed takes effect with the next request. Uploads are refused on their
``Content-Length`` (413) before the body is read, and reading stops at the limit when the length is absent
or wrong. Answers are kept under ``WORKSPACE/results/{id}`` (or ``results_dir``, or in memory when neither
is writable), at most ``results_max_mb`` of them and none unused for longer than ``results_max_age_h``,
least recently used removed first; the query image is stored at the size the entries analysed it at.

Every error is a JSON body ``{"error": message}`` with a 4xx status saying what to change (503 when busy;
500 only for a bug, without a stack trace); the service reads no path from a request: names are checked
against the workspace, so only files inside it are ever served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genprov.app.engine import (
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_QUEUE,
    DEFAULT_WORKERS,
    PROMPT_REQUIRED,
    AnalysisPool,
    BusyError,
    LoadedWorkspace,
    PromptRequiredError,
    ProvenanceEngine,
)
from genprov.app.results import DEFAULT_RESULTS_MAX_AGE_H, DEFAULT_RESULTS_MAX_MB, RESULT_ID, ResultStore
from genprov.app.workspace import Workspace, check_name
from genprov.data import decode_image, image_to_tensor, to_uint8
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.t2i import PromptTooLongError

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_QUEUE",
    "DEFAULT_RESULTS_MAX_AGE_H",
    "DEFAULT_RESULTS_MAX_MB",
    "DEFAULT_WORKERS",
    "MAX_FILENAME_CHARS",
    "MAX_PROMPT_BYTES",
    "ServiceError",
    "create_app",
]

log = logging.getLogger(__name__)

#: Longest accepted upload filename (it is shown on the result page).
MAX_FILENAME_CHARS = 255
_MULTIPART_SLACK = 64 * 1024  # multipart framing and small fields allowed beyond the image limit
_MAX_PART_HEADER = 16 * 1024  # so that a long filename gets its own clear message
#: Longest accepted prompt field, in bytes (far beyond what a text encoder takes: 77 tokens for Stable Diffusion).
MAX_PROMPT_BYTES = 4096
_ANALYSIS_CACHE = 256  # analyses kept in memory, by image bytes and workspace manifest
_THUMB_PX = 96
_UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The image (PNG, JPEG, ...)."},
                        "prompt": {
                            "type": "string",
                            "description": "The query's prompt (needed by entries of a text-to-image model).",
                        },
                    },
                }
            }
        },
    }
}


class ServiceError(Exception):
    """An error answered with ``status``, a JSON ``{"error": message}`` and optional extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class _Analysis:
    """What is cached for one image and workspace: no request's data (filename, id, timing) is in it."""

    image: dict[str, Any]
    answer: dict[str, Any]
    query_png: bytes


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_pil(x: Any) -> Image.Image:
    """An 8-bit L or RGB image of one (C, H, W) tensor in [-1, 1]."""
    pixels = to_uint8(x[None])[0]
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _thumbnail(x: np.ndarray) -> bytes:
    """PNG of one (C, H, W) image in [-1, 1], upscaled (nearest) to about ``_THUMB_PX`` pixels."""
    import torch

    image = _to_pil(torch.from_numpy(x))
    scale = max(1, _THUMB_PX // max(image.size))
    return _png(image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST))


def _stored_query(image: Image.Image, size: int) -> bytes:
    """PNG of ``image`` as 8-bit L or RGB (any mode: CMYK, P, LA, I;16, ...), at most ``size`` pixels a side."""
    if image.mode.startswith("I;16"):  # Pillow cannot resize it; convert at full depth first
        image = _to_pil(image_to_tensor(image))
    small = image.copy()
    small.thumbnail((size, size))
    return _png(_to_pil(image_to_tensor(small)))


def _check_number(name: str, flag: str, value: float | None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} ({flag}) must be a positive number; got {value!r}.")


def _filename(raw: bytes | None) -> str:
    """The upload's filename without folders; refuses control characters and more than MAX_FILENAME_CHARS."""
    name = (raw or b"").decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    if len(name) > MAX_FILENAME_CHARS:
        raise ServiceError(
            400,
            f"The upload's filename is {len(name)} characters long; at most {MAX_FILENAME_CHARS} are allowed: "
            "rename the file.",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ServiceError(400, "The upload's filename contains control characters; rename the file.")
    return name or "the upload"


async def _read_upload(request: Request, limit: int, max_mb: float) -> tuple[bytes, str, str | None]:
    """The bytes and filename of form field ``file`` and the text of field ``prompt`` (``None`` when absent or
    blank), streamed: never more than the limits are read or kept."""
    too_big = ServiceError(413, f"The upload is larger than {max_mb:g} MB; send a smaller image.")
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"application/x-www-form-urlencoded":
        raise ServiceError(
            422,
            "Bad request: a URL-encoded form cannot carry the image; send it as multipart/form-data in form "
            "field 'file' (e.g. curl -F file=@image.png URL).",
        )
    if content_type != b"multipart/form-data":
        raise ServiceError(
            415,
            f"Content-Type {content_type.decode('latin-1') or 'none'!r} is not accepted: send the image as "
            "multipart/form-data in form field 'file' (e.g. curl -F file=@image.png URL).",
        )
    if not params.get(b"boundary"):
        raise ServiceError(400, "The multipart/form-data body has no boundary; let your HTTP client build the form.")
    part: dict[str, Any] = {}
    fields: list[str] = []
    found: dict[str, Any] = {"data": [], "size": 0, "filename": None, "count": 0, "prompt": bytearray()}

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = options.get(b"name", b"").decode("utf-8", errors="replace")
        fields.append(part["name"])
        if part["name"] == "file":
            found["count"] += 1
            found["filename"] = options.get(b"filename")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("name") == "file" and found["count"] == 1:
            found["size"] += end - start
            if found["size"] <= limit:
                found["data"].append(data[start:end])
        elif part.get("name") == "prompt":
            found["prompt"] += data[start:end]
            if len(found["prompt"]) > MAX_PROMPT_BYTES:
                _prompt(bytes(found["prompt"]))  # refuses it: never more than the limit is kept

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
        max_header_size=_MAX_PART_HEADER,
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + _MULTIPART_SLACK:
                raise too_big
            parser.write(chunk)
            if found["size"] > limit:
                raise too_big
        parser.finalize()
    except MultipartParseError as err:
        raise ServiceError(400, f"The multipart/form-data body is malformed ({err}); resend the form.") from None
    except ClientDisconnect:
        raise ServiceError(400, "The upload was interrupted before it was complete; send it again.") from None
    if found["count"] != 1:
        got = f"fields {', '.join(repr(f) for f in fields)}" if fields else "no fields"
        problem = "several files in field 'file'" if found["count"] > 1 else got
        raise ServiceError(
            422, f"Bad request: send one image as form field 'file' (e.g. curl -F file=@image.png URL); got {problem}."
        )
    return b"".join(found["data"]), _filename(found["filename"]), _prompt(bytes(found["prompt"]))


def _prompt(raw: bytes) -> str | None:
    """The prompt's text (``None`` when blank); refuses more than :data:`MAX_PROMPT_BYTES` and bytes that are not
    UTF-8."""
    if len(raw) > MAX_PROMPT_BYTES:
        raise ServiceError(
            400, f"The prompt is longer than {MAX_PROMPT_BYTES} bytes; send the prompt the image was made with."
        )
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ServiceError(400, "The prompt is not UTF-8 text; send it as UTF-8.") from None
    return text or None


class _HeadAsGet:
    """ASGI middleware: answer ``HEAD`` like ``GET`` without the body (FastAPI routes take GET only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _validation_message(exc: RequestValidationError) -> str:
    """One line per wrong parameter, naming it: 'index must be an integer; got 'x''."""
    problems = []
    for error in exc.errors():
        field = str(error.get("loc", ("", "the request"))[-1])
        if error.get("type") == "int_parsing":
            problems.append(f"{field} must be an integer; got {error.get('input')!r}")
        else:
            problems.append(f"{field}: {error.get('msg', 'invalid')}")
    return "Bad request: " + "; ".join(problems or ["check the parameters"]) + "."


def create_app(
    workspace: str | Path | Workspace,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    workers: int = DEFAULT_WORKERS,
    queue_size: int = DEFAULT_QUEUE,
    results_dir: str | Path | None = None,
    results_max_mb: float = DEFAULT_RESULTS_MAX_MB,
    results_max_age_h: float | None = DEFAULT_RESULTS_MAX_AGE_H,
) -> FastAPI:
    """The service over ``workspace`` (a folder or an open :class:`Workspace`).

    Args:
        workspace: The workspace (opened and verified here). It may be read-only: answers then go to
            ``results_dir`` or memory, and ``/health`` says so.
        max_upload_mb: Largest accepted upload in MB (``--max-upload-mb``).
        workers: Analysis threads (``--workers``); each loads its own copy of every entry.
        queue_size: Requests that may wait for a worker (``--queue``); beyond it the answer is 503 with
            ``Retry-After``.
        results_dir: Where answers are kept (``--results-dir``; it must be writable); default
            ``WORKSPACE/results``, or memory when that is not writable.
        results_max_mb: Total size of kept answers (``--results-max-mb``); the least recently used go first.
        results_max_age_h: Answers unused for longer are removed (``--results-max-age-hours``); ``None`` keeps
            them until the size limit.

    Raises:
        ConfigError: A limit is not positive, or ``results_dir`` is not writable.
        CheckpointError: The workspace cannot be opened.
    """
    _check_number("max_upload_mb", "--max-upload-mb", max_upload_mb)
    _check_number("results_max_mb", "--results-max-mb", results_max_mb)
    _check_number("results_max_age_h", "--results-max-age-hours", results_max_age_h, optional=True)
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    results = ResultStore.open(
        ws.results_dir,
        results_dir=Path(results_dir) if results_dir is not None else None,
        max_bytes=int(results_max_mb * 2**20),
        max_age_s=results_max_age_h * 3600 if results_max_age_h is not None else None,
    )
    pool = AnalysisPool(ws, workers=workers, queue_size=queue_size)
    limit = int(max_upload_mb * 2**20)
    templates = Environment(loader=PackageLoader("genprov.app", "templates"), autoescape=select_autoescape())
    cache: OrderedDict[tuple[str, str, str | None], _Analysis] = OrderedDict()
    train_cache: dict[tuple[str, str], np.ndarray] = {}
    cache_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(
        title="genprov provenance service",
        description="Which model made this image, and which training images shaped it.",
        version="1",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.results = results
    app.add_middleware(_HeadAsGet)  # every GET route also answers HEAD

    # ------------------------------------------------------------------------------------- errors

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(BusyError)
    async def _busy(request: Request, exc: BusyError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = "Not found: see /docs for the endpoints."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; use {headers.get('Allow', 'GET')}."
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "Internal error; the server logged it. Try another image."}, status_code=500)

    # ------------------------------------------------------------------------------------- helpers

    def reading() -> LoadedWorkspace:
        """The current workspace, re-read when its manifest changed (call on a thread, not the loop)."""
        try:
            return pool.refresh()
        except CheckpointError as err:
            raise ServiceError(503, str(err)) from None

    def entry_or_404(state: LoadedWorkspace, name: str) -> Any:
        try:
            check_name(name)
            return state.workspace.entry(name)
        except (ConfigError, KeyError):
            raise ServiceError(404, f"Unknown workspace entry {name!r}; GET /api/entries lists them.") from None

    def analyse(
        engine: ProvenanceEngine, state: LoadedWorkspace, data: bytes, name: str, prompt: str | None
    ) -> tuple[_Analysis, bool]:
        """The analysis of ``data`` (and ``prompt``) under ``state`` (cached by image bytes, prompt and manifest);
        on a worker thread."""
        key = (state.token, hashlib.sha256(data).hexdigest(), prompt)
        with cache_lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key], True
        image = decode_image(data, name=name)
        analysis = _Analysis(
            image={"width": image.width, "height": image.height, "mode": image.mode},
            answer=engine.analyze(image) if prompt is None else engine.analyze(image, prompt),
            query_png=_stored_query(image, state.analysed_size or _THUMB_PX),
        )
        with cache_lock:
            for old in [k for k in cache if k[0] != state.token]:
                del cache[old]
            cache[key] = analysis
            while len(cache) > _ANALYSIS_CACHE:
                cache.popitem(last=False)
        return analysis, False

    async def ask(data: bytes, source: str, prompt: str | None) -> dict[str, Any]:
        """Analyse ``data`` on a worker and keep this request's own answer (own id, own source, own timing)."""
        if pool.reload_error is not None or pool.stale():
            await run_in_threadpool(reading)  # re-reads a changed workspace; 503 while it cannot be opened
        try:
            (analysis, cached), timing = await pool.run(
                lambda engine, state: analyse(engine, state, data, source, prompt)
            )
        except PromptRequiredError as err:
            raise ServiceError(422, str(err)) from None
        except (DataError, PromptTooLongError) as err:
            raise ServiceError(400, str(err)) from None
        result_id = secrets.token_hex(8)
        result = {
            "id": result_id,
            "url": f"/results/{result_id}",
            "source": source,
            **({"prompt": prompt} if prompt is not None else {}),
            "image": analysis.image,
            **analysis.answer,
            "timing": {**timing.to_dict(), "cached": cached},
        }
        await run_in_threadpool(results.put, result_id, result, analysis.query_png)
        return result

    def stored_result(result_id: str) -> dict[str, Any]:
        found = results.get(result_id) if RESULT_ID.match(result_id) else None
        if found is None:
            raise ServiceError(
                404,
                f"No result {result_id!r}: results are created by POST /api/attribute and kept at most "
                f"{results.max_bytes / 2**20:g} MB in all"
                + (f" and {results.max_age_s / 3600:g} h unused" if results.max_age_s is not None else "")
                + " (least recently used removed first).",
            )
        return found

    def example_path(state: LoadedWorkspace, name: str) -> Path:
        found = {p.stem: p for p in state.workspace.examples()}
        if name not in found:
            raise ServiceError(404, f"No example {name!r}; GET /api/examples lists them.")
        return found[name]

    # ------------------------------------------------------------------------------------ endpoints

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, what is loaded and what is not (with the reason), the queue, and where answers are kept.

        ``status`` is ``ok``, ``degraded`` (some entries unavailable) or ``error`` (the workspace changed and
        cannot be re-opened). Answered on the event loop without waiting for any analysis.
        """
        state = pool.current
        status = "error" if pool.reload_error else "degraded" if state.errors else "ok"
        return {
            "status": status,
            "entries": len(state.loaded),
            "unavailable": state.errors,
            "workspace_error": pool.reload_error,
            "queue": pool.describe(),
            "results": results.describe(),
        }

    @app.get("/api/entries")
    def entries() -> list[dict[str, Any]]:
        """The workspace entries: name, kind, facts, whether they loaded (else the reason), and what a loaded one
        does with the query's prompt (``prompt``: ``"required"``, ``"optional"`` (recorded in its answer) or
        ``null`` (ignored))."""
        state = reading()
        return [
            {
                "name": e.name,
                "kind": e.kind,
                "info": e.info,
                "loaded": e.name in state.loaded,
                "error": state.errors.get(e.name),
                "prompt": state.prompts.get(e.name),
            }
            for e in state.workspace.entries
        ]

    @app.get("/api/examples")
    def examples() -> list[dict[str, str]]:
        """Bundled example images."""
        return [{"name": p.stem, "image": f"/api/examples/{p.stem}.png"} for p in reading().workspace.examples()]

    @app.get("/api/examples/{name}.png")
    def example_image(name: str) -> Response:
        """An example image."""
        return Response(example_path(reading(), name).read_bytes(), media_type="image/png")

    @app.post("/api/attribute", openapi_extra=_UPLOAD_FORM)
    async def attribute(request: Request) -> dict[str, Any]:
        """Ask every workspace entry about an uploaded image (multipart form field ``file``; field ``prompt``: the
        query's prompt, which entries of a text-to-image model need)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
            raise ServiceError(413, f"The upload is larger than {max_upload_mb:g} MB; send a smaller image.")
        with pool.slot():
            data, filename, prompt = await _read_upload(request, limit, max_upload_mb)
            return await ask(data, filename, prompt)

    @app.post("/api/attribute/example/{name}")
    async def attribute_example(name: str, prompt: str | None = None) -> dict[str, Any]:
        """Ask every workspace entry about a bundled example (``prompt``: its prompt, for text-to-image entries)."""
        text = _prompt(prompt.encode("utf-8")) if prompt is not None else None
        with pool.slot():
            path = example_path(await run_in_threadpool(reading), name)
            return await ask(await run_in_threadpool(path.read_bytes), f"example {name}", text)

    @app.get("/api/results/{result_id}")
    def result_json(result_id: str) -> dict[str, Any]:
        """A stored answer."""
        return stored_result(result_id)

    @app.get("/api/results/{result_id}/query.png")
    def result_image(result_id: str) -> Response:
        """The image a stored answer is about, at the size it was analysed at."""
        stored_result(result_id)
        data = results.query_png(result_id)
        if data is None:
            raise ServiceError(404, f"The image of result {result_id!r} is no longer kept.")
        return Response(data, media_type="image/png")

    @app.get("/api/entries/{name}/train/{index}.png")
    def train_image(name: str, index: int) -> Response:
        """Training image ``index`` of a data-attribution entry."""
        state = reading()
        entry = entry_or_404(state, name)
        if entry.kind not in ("trak", "similarity"):
            raise ServiceError(404, f"Entry {name!r} ({entry.kind}) has no training images.")
        key = (state.token, name)
        images = train_cache.get(key)
        if images is None:
            images = state.workspace.train_images(name).numpy()
            train_cache.clear()  # one entry's images at a time, of the current workspace only
            train_cache[key] = images
        if not 0 <= index < len(images):
            raise ServiceError(404, f"Entry {name!r} has training images 0..{len(images) - 1}; got {index}.")
        return Response(_thumbnail(images[index]), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The upload page."""
        listed = entries()
        return templates.get_template("index.html").render(
            entries=listed,
            examples=examples(),
            max_upload_mb=max_upload_mb,
            prompt_field=any(e["prompt"] for e in listed),
            prompt_required=[e["name"] for e in listed if e["prompt"] == PROMPT_REQUIRED],
        )

    @app.get("/results/{result_id}", response_class=HTMLResponse)
    def result_page(result_id: str) -> str:
        """One answer as a page."""
        return templates.get_template("result.html").render(result=stored_result(result_id))

    return app
