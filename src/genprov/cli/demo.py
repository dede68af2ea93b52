"""``genprov demo``: the main job on the embedded default dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from genprov.cli.common import DATA_ROOT_OPTION, JSON_OPTION, SEED_OPTION, console, emit, handle_errors
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoConfig, run_demo


@handle_errors
def demo(
    out: Path = typer.Option(Path("demo-report"), "--out", help="Report folder (models are cached in OUT/models)."),
    seed: int = SEED_OPTION,
    quick: bool = typer.Option(False, "--quick", help="Train every model for 1/20 of its steps (a smoke run)."),
    data: str = typer.Option("digits", "--data", help="Dataset name or path; the default needs no files."),
    data_root: Path | None = DATA_ROOT_OPTION,
    image_size: int = typer.Option(16, "--image-size", help="Image side every demo model works on."),
    only: str = typer.Option(
        "",
        "--only",
        help=f"Comma-separated sections to run (data always runs): {', '.join(DEMO_SECTIONS.names())}.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run every capability end to end on digits and write one HTML report.

    Trains (or reuses from OUT/models) a DCGAN, a DDPM and a classifier, runs each demo section and writes
    OUT/index.html and OUT/results.json.

    Example: genprov demo --out demo-report
    """
    config = DemoConfig(
        data=data,
        image_size=image_size,
        seed=seed,
        quick=quick,
        sections=tuple(s.strip() for s in only.split(",") if s.strip()),
    )
    results = run_demo(config, out, data_root=data_root)
    if as_json:
        emit(results, as_json=True)
    else:
        console.print(f"[green]report written:[/] {results['report']}  (open it in a browser)")
