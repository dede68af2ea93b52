"""``genprov serve``: the provenance service and page over a workspace."""

from __future__ import annotations

from pathlib import Path

import typer

from genprov.cli.common import console, handle_errors
from genprov.exceptions import MissingDependencyError


@handle_errors
def serve(
    workspace: Path = typer.Option(..., "--workspace", help="Workspace folder (genprov workspace add / genprov demo)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest accepted upload in MB."),
) -> None:
    """Serve the provenance page and REST API (OpenAPI at /docs) for a workspace.

    Example: genprov serve --workspace demo-report/workspace   (then open http://127.0.0.1:8000)
    """
    try:
        import uvicorn

        from genprov.app.server import create_app
    except ImportError as err:  # pragma: no cover - the serve extra is part of the dev install
        raise MissingDependencyError(err.name or "fastapi", "serve", "'genprov serve'") from err
    app = create_app(workspace, max_upload_mb=max_upload_mb)
    console.print(f"serving {workspace} on http://{host}:{port} (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
