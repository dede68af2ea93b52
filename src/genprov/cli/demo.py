"""``genprov demo``: the main job on the embedded default dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from genprov.app.register import add_flipad, add_keyed, add_trak
from genprov.app.workspace import Workspace
from genprov.attribution.model import KeyedGenerators
from genprov.cli.common import DATA_ROOT_OPTION, JSON_OPTION, SEED_OPTION, config_option, console, emit, handle_errors
from genprov.data import load_dataset, save_images
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoConfig, run_demo
from genprov.models.checkpoints import load_checkpoint
from genprov.models.sampling import sample


def build_demo_workspace(out: Path, servable: list[dict[str, Any]], *, data: str, seed: int) -> Path:
    """Register what the demo's sections made servable in ``out/workspace``, with example images.

    Examples: a real held-out digit, a sample of each demo generator and of keyed user 0, so the page
    shows a positive verdict for each kind of entry.
    """
    ws = Workspace.create(out / "workspace")
    examples: dict[str, torch.Tensor] = {"real-digit": load_dataset(data, split="test", n=1, seed=seed).images}
    for item in servable:
        name, kind = item["name"], item["kind"]
        if name in {e.name for e in ws.entries}:
            ws.remove(name)  # a re-run of the demo may have retrained it
        if kind == "flipad":
            add_flipad(ws, name, item["detector"], generator=item["generator"])
            examples[f"{name}-sample"] = sample(load_checkpoint(item["generator"]).model, 1, seed=seed + 1)
        elif kind == "keyed":
            add_keyed(ws, name, item["family"])
            examples[f"{name}-user-0-sample"] = KeyedGenerators.from_pretrained(item["family"]).sample(
                0, 1, seed=seed + 1
            )
        elif kind == "trak":
            with np.load(item["train"], allow_pickle=False) as arrays:
                train = torch.from_numpy(arrays["images"])
            add_trak(ws, name, item["store"], train=train)
    for name, image in examples.items():
        save_images(image, ws.folder / "examples", prefix=name)
    return ws.folder


@handle_errors
def demo(
    out: Path = typer.Option(Path("demo-report"), "--out", help="Report folder (models are cached in OUT/models)."),
    seed: int = SEED_OPTION,
    quick: bool = config_option(
        DemoConfig, "quick", "--quick", help="Train every model for 1/20 of its steps (a smoke run)."
    ),
    data: str = config_option(DemoConfig, "data", "--data", help="Dataset name or path; the default needs no files."),
    data_root: Path | None = DATA_ROOT_OPTION,
    image_size: int = config_option(
        DemoConfig, "image_size", "--image-size", help="Image side every demo model works on."
    ),
    only: str = config_option(
        DemoConfig,
        "sections",
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
    results["workspace"] = str(build_demo_workspace(out, results["servable"], data=data, seed=seed))
    if as_json:
        emit(results, as_json=True)
    else:
        console.print(f"[green]report written:[/] {results['report']}  (open it in a browser)")
        console.print(f"service workspace: genprov serve --workspace {results['workspace']}")
