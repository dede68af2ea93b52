"""``genprov workspace``: register what ``genprov serve`` answers with.

A workspace folder holds self-contained copies of fitted FLIPAD detectors (of a GAN or of a text-to-image
pipeline's VAE), keyed families, TRAK / D-TRAK stores (of a DDPM or a pipeline + LoRA) and similarity indexes (see
``genprov.app.workspace``); ``add`` copies an item in and proves it loads, ``check``
verifies every file against its recorded SHA-256.
"""

from __future__ import annotations

from pathlib import Path

import typer

from genprov.app.register import add_flipad, add_keyed, add_similarity, add_trak
from genprov.app.workspace import MANIFEST, Workspace, check_name, check_outside
from genprov.cli.common import DATA_ROOT_OPTION, JSON_OPTION, console, emit, handle_errors
from genprov.data.images import min_image_size, read_pil_image
from genprov.exceptions import DataError
from genprov.utils.io import atomic_write_bytes

app = typer.Typer(
    help="Register fitted detectors, keyed families and attribution stores for 'genprov serve'.\n\nExample: "
    "genprov workspace add flipad --workspace ws --name my-gan --detector runs/det && genprov serve --workspace ws",
    no_args_is_help=True,
    add_completion=False,
)
add_app = typer.Typer(help="Add an item to a workspace (created if missing).", no_args_is_help=True)
app.add_typer(add_app, name="add")

WORKSPACE_OPTION = typer.Option(..., "--workspace", help="The workspace folder (created if missing).")
NAME_OPTION = typer.Option(..., "--name", help="Entry name: letters, digits, '_', '.', '-'.")


def _open_for(workspace: Path, name: str, *items: Path | None) -> Workspace:
    """Open (or create) the workspace an item is added to, refusing first a workspace inside an item."""
    for item in items:
        if item is not None:
            check_outside(workspace, item, name)
    return Workspace.create(workspace)


def _summary(ws: Workspace, name: str, as_json: bool) -> None:
    entry = ws.entry(name)
    emit(
        {
            "workspace": str(ws.folder),
            "name": entry.name,
            "kind": entry.kind,
            "files": len(entry.files),
            **{k: v for k, v in entry.info.items() if isinstance(v, (int, str))},
        },
        as_json=as_json,
        title="added",
    )


@add_app.command("flipad")
@handle_errors
def add_flipad_cmd(
    workspace: Path = WORKSPACE_OPTION,
    name: str = NAME_OPTION,
    detector: Path = typer.Option(..., "--detector", help="Folder written by 'genprov flipad fit'."),
    generator: Path | None = typer.Option(
        None,
        "--generator",
        help="The GAN checkpoint (default: the recorded one), or the text-to-image pipeline folder a detector of a "
        "pipeline's VAE was fitted on (required for one; copied whole: several GB for Stable Diffusion).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a fitted FLIPAD (or baseline, or AEROBLADE) detector and its generator: a GAN, or a pipeline.

    A detector fitted on a pipeline ('genprov flipad fit --generator PIPELINE --prompt ...') records only its
    VAE's fingerprint: give the pipeline with --generator; its VAE is checked before anything is copied. The
    service then answers with the score, threshold and verdict, and records an upload's prompt when given.

    Example: genprov workspace add flipad --workspace ws --name my-gan --detector runs/det
    Example: genprov workspace add flipad --workspace ws --name my-sd --detector runs/t2i-det --generator runs/t2i
    """
    ws = _open_for(workspace, name, detector, generator)
    add_flipad(ws, name, detector, generator=generator)
    _summary(ws, name, as_json)


@add_app.command("keyed")
@handle_errors
def add_keyed_cmd(
    workspace: Path = WORKSPACE_OPTION,
    name: str = NAME_OPTION,
    family: Path = typer.Option(..., "--family", help="Folder written by 'genprov keyed create'."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a keyed model family.

    Example: genprov workspace add keyed --workspace ws --name users --family runs/family
    """
    ws = _open_for(workspace, name, family)
    add_keyed(ws, name, family)
    _summary(ws, name, as_json)


@add_app.command("trak")
@handle_errors
def add_trak_cmd(
    workspace: Path = WORKSPACE_OPTION,
    name: str = NAME_OPTION,
    store: Path = typer.Option(..., "--store", help="Feature store written by 'genprov trak featurize'."),
    model: Path | None = typer.Option(
        None, "--model", help="The DDPM checkpoint or text-to-image pipeline folder (default: the recorded one)."
    ),
    lora: Path | None = typer.Option(
        None, "--lora", help="The LoRA folder of a pipeline store (default: the recorded one, if any)."
    ),
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a TRAK / D-TRAK feature store with its model (a DDPM, or a pipeline and its LoRA) and training images.

    Example: genprov workspace add trak --workspace ws --name dtrak --store runs/dtrak
    """
    ws = _open_for(workspace, name, store, model, lora)
    add_trak(ws, name, store, model=model, lora=lora, data_root=data_root)
    _summary(ws, name, as_json)


@add_app.command("similarity")
@handle_errors
def add_similarity_cmd(
    workspace: Path = WORKSPACE_OPTION,
    name: str = NAME_OPTION,
    store: Path = typer.Option(..., "--store", help="Index folder written by 'genprov similarity index'."),
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a feature-similarity index with its extractor weights, mapper and training images.

    No model is needed (the answer is the query's nearest training images), also for the outputs of a customized
    text-to-image pipeline: upload them with their prompt, which the answer records.

    Example: genprov workspace add similarity --workspace ws --name sim --store runs/sim
    """
    ws = _open_for(workspace, name, store)
    add_similarity(ws, name, store, data_root=data_root)
    _summary(ws, name, as_json)


@app.command("examples")
@handle_errors
def examples_cmd(
    images: list[Path] = typer.Argument(..., help="PNG files offered as examples on the page."),
    workspace: Path = WORKSPACE_OPTION,
) -> None:
    """Copy example images into the workspace (the page offers them).

    Every image is decoded fully first (a truncated, corrupt or over-large PNG is refused, naming it), and
    one smaller than the entries accept (half the largest entry's image size) is refused too; nothing is
    copied unless all of them are sound.

    Example: genprov workspace examples --workspace ws samples/*.png
    """
    entries = Workspace.open(workspace, verify=False).entries if (workspace / MANIFEST).is_file() else []
    sizes = [int(e.info.get("image_size", 0)) for e in entries]
    smallest = min_image_size(max(sizes)) if sizes else 1
    for image in images:
        if image.suffix.lower() != ".png" or not image.is_file():
            raise DataError(f"{image} is not a PNG file; examples must be PNG images.")
        check_name(image.stem)
        pil = read_pil_image(image)
        if pil.format != "PNG":
            raise DataError(f"{image} is named .png but is not a PNG image; convert it to PNG.")
        if min(pil.size) < smallest:
            raise DataError(
                f"{image} is {pil.width}x{pil.height} pixels; this workspace's entries need at least "
                f"{smallest}x{smallest} (half the largest entry's {max(sizes)}-pixel size), which would refuse it. "
                "Use a larger image."
            )
    ws = Workspace.create(workspace)
    folder = ws.folder / "examples"
    for image in images:
        atomic_write_bytes(folder / f"{image.stem}.png", image.read_bytes())
    console.print(f"{len(images)} example(s) in {folder}")


@app.command("list")
@handle_errors
def list_cmd(
    workspace: Path = typer.Option(..., "--workspace", help="The workspace folder."), as_json: bool = JSON_OPTION
) -> None:
    """List the entries (checks that their files exist).

    Example: genprov workspace list --workspace ws
    """
    ws = Workspace.open(workspace, verify=False)
    emit(
        [{"name": e.name, "kind": e.kind, "files": len(e.files)} for e in ws.entries], as_json=as_json, title="entries"
    )


@app.command("check")
@handle_errors
def check_cmd(workspace: Path = typer.Option(..., "--workspace", help="The workspace folder.")) -> None:
    """Verify every entry's files against their recorded SHA-256.

    Exit code 0 when every file is as added; 1 when an entry's file is missing or changed (each is named,
    one per line); 2 on any other error, e.g. a folder that is not a workspace.

    Example: genprov workspace check --workspace ws
    """
    ws = Workspace.open(workspace, strict=False)
    problems = ws.all_problems()
    if problems:
        for problem in problems:
            console.print(problem, highlight=False, soft_wrap=True)
        console.print(
            f"[bold red]check failed:[/] {len(problems)} file(s) missing or changed in {workspace}; re-add those "
            "entries ('genprov workspace add ...') or remove them ('genprov workspace remove NAME').",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    console.print(f"[green]ok[/]: {len(ws)} entr{'y' if len(ws) == 1 else 'ies'}, every file as added.")


@app.command("remove")
@handle_errors
def remove_cmd(
    name: str = typer.Argument(..., help="Entry to remove."),
    workspace: Path = typer.Option(..., "--workspace", help="The workspace folder."),
) -> None:
    """Unregister an entry and delete its copy.

    Example: genprov workspace remove my-gan --workspace ws
    """
    ws = Workspace.open(workspace, verify=False)
    ws.remove(name)
    console.print(f"removed {name}")
