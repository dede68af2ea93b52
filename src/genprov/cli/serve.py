"""``genprov serve``: the provenance service and page over a workspace."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from genprov.app.engine import DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE, DEFAULT_WORKERS
from genprov.app.results import DEFAULT_RESULTS_MAX_AGE_H, DEFAULT_RESULTS_MAX_MB
from genprov.cli.common import console, handle_errors
from genprov.exceptions import ConfigError, MissingDependencyError


def _check_can_listen(host: str, port: int) -> None:
    """Refuse at once, in one line, an address that cannot be listened on (in use, not ours, unknown host)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise ConfigError(
            f"Cannot listen on --host {host} --port {port} ({err.strerror or err}); pick another port or host."
        ) from None


@handle_errors
def serve(
    workspace: Path = typer.Option(..., "--workspace", help="Workspace folder (genprov workspace add / genprov demo)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port (1-65535)."),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_MB, "--max-upload-mb", help="Largest accepted upload in MB (> 0)."
    ),
    workers: int = typer.Option(
        DEFAULT_WORKERS,
        "--workers",
        min=1,
        max=64,
        help="Analysis threads; each loads its own copy of every entry (1-64).",
    ),
    queue: int = typer.Option(
        DEFAULT_QUEUE,
        "--queue",
        min=0,
        help="Requests that may wait for a worker; beyond it the answer is 503 + Retry-After.",
    ),
    results_dir: Path | None = typer.Option(
        None,
        "--results-dir",
        help="Writable folder for the answers; default WORKSPACE/results, or memory if that is not writable.",
    ),
    results_max_mb: float = typer.Option(
        DEFAULT_RESULTS_MAX_MB,
        "--results-max-mb",
        help="Total size of kept answers in MB; the least recently used are removed first.",
    ),
    results_max_age_hours: float = typer.Option(
        DEFAULT_RESULTS_MAX_AGE_H,
        "--results-max-age-hours",
        min=0,
        help="Remove answers unused for longer (0: only the size limit).",
    ),
) -> None:
    """Serve the provenance page and REST API (OpenAPI at /docs) for a workspace.

    Analyses run on --workers threads behind a queue of --queue requests (a full queue answers 503 with
    Retry-After; /health answers at once either way). Answers are kept in WORKSPACE/results (or
    --results-dir; in memory when neither is writable, e.g. a read-only workspace), at most --results-max-mb
    in all and none unused for longer than --results-max-age-hours.

    Example: genprov serve --workspace demo-report/workspace   (then open http://127.0.0.1:8000)
    """
    try:
        import uvicorn

        from genprov.app.server import create_app
    except ImportError as err:  # pragma: no cover - the serve extra is part of the dev install
        raise MissingDependencyError(err.name or "fastapi", "serve", "'genprov serve'") from err
    app = create_app(
        workspace,
        max_upload_mb=max_upload_mb,
        workers=workers,
        queue_size=queue,
        results_dir=results_dir,
        results_max_mb=results_max_mb,
        results_max_age_h=results_max_age_hours or None,
    )
    _check_can_listen(host, port)
    console.print(f"serving {workspace} on http://{host}:{port} (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
