"""``genprov data``: list the built-in datasets, describe one, download MNIST / Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from genprov.cli.common import DATA_ROOT_OPTION, JSON_OPTION, console, emit, handle_errors
from genprov.data import (
    DOWNLOADABLE,
    dataset_info,
    download,
    list_datasets,
    load_dataset,
    missing_files,
    save_image_grid,
)
from genprov.exceptions import DataError

app = typer.Typer(
    help="Datasets: list the built-in ones, inspect one, download MNIST / Fashion-MNIST.\n\n"
    "Example: genprov data info mnist --data-root ../shared/data",
    no_args_is_help=True,
    add_completion=False,
)

_GRID_SIZE = 64


def _files_present(name: str, data_root: Path | None) -> bool | None:
    """Whether every file of ``name`` is under the data root (``None`` when no data root is known)."""
    try:
        return not missing_files(name, data_root)
    except DataError:
        return None


def _files_label(needs_files: bool, present: bool | None) -> str:
    if not needs_files:
        return "built in"
    return "?" if present is None else "present" if present else "missing"


@app.command("list")
@handle_errors
def list_cmd(data_root: Path | None = DATA_ROOT_OPTION, as_json: bool = JSON_OPTION) -> None:
    """List the built-in datasets and whether their files are present under the data root.

    Example: genprov data list --data-root ../shared/data --json
    """
    rows: list[dict[str, Any]] = []
    for info in list_datasets():
        present = True if not info.needs_files else _files_present(info.name, data_root)
        if as_json:
            rows.append({**info.to_dict(), "files_present": present})
        else:
            rows.append(
                {
                    "name": info.name,
                    "C x H x W": f"{info.channels}x{info.image_size}x{info.image_size}",
                    "classes": info.n_classes,
                    "train/test": "/".join(str(info.n_examples.get(s, "-")) for s in ("train", "test")),
                    "files": _files_label(info.needs_files, present) + (" (downloadable)" if info.downloadable else ""),
                }
            )
    emit(rows, as_json=as_json, title="genprov datasets")


def _describe_path(name: str, split: str) -> dict[str, Any]:
    dataset = load_dataset(name, split=split)
    return {
        "name": name,
        "image_size": dataset.image_size,
        "channels": dataset.n_channels,
        "n_classes": dataset.n_classes,
        "class_names": list(dataset.class_names or ()),
        "n_examples": {split: len(dataset)},
        "fingerprint": dataset.fingerprint(),
    }


@app.command("info")
@handle_errors
def info_cmd(
    name: str = typer.Argument(..., help="A built-in dataset (see 'genprov data list') or a path to images."),
    data_root: Path | None = DATA_ROOT_OPTION,
    out: Path | None = typer.Option(
        None, "--out", help=f"Folder to save an example grid ({_GRID_SIZE} random training images) to."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the example images shown in the grid."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Describe a dataset: size, channels, classes, and examples per split when its files are present.

    Example: genprov data info mnist --data-root ../shared/data --out mnist-info
    """
    is_builtin = name in {info.name for info in list_datasets()} or not Path(name).exists()
    if is_builtin:
        info = dataset_info(name)
        result: dict[str, Any] = info.to_dict()
        counts: dict[str, int | None] = {}
        missing: dict[str, list[str]] = {}
        for split in info.splits:
            try:
                missing[split] = missing_files(name, data_root, split=split)
            except DataError:  # no data root: counts unknown
                missing[split] = list(info.split_files[split])
            counts[split] = len(load_dataset(name, split=split, data_root=data_root)) if not missing[split] else None
        result["n_examples"] = counts
        result["missing_files"] = sorted({f for files in missing.values() for f in files})
        grid_split = next((s for s in info.splits if counts[s] is not None), None)
    else:
        result = _describe_path(name, "train")
        grid_split = "train"
    if out is not None:
        if grid_split is None:
            raise DataError(
                f"Cannot save an example grid: no split of {name!r} has its files under the data root. "
                "Pass --data-root (or set GENPROV_DATA) to the folder holding them."
            )
        count = result["n_examples"][grid_split]
        sample = load_dataset(name, split=grid_split, data_root=data_root, n=min(_GRID_SIZE, count), seed=seed)
        scale = max(1, 64 // sample.image_size)
        grid = save_image_grid(sample.images, out / f"{Path(name).name}-{grid_split}-examples.png", nrow=8, scale=scale)
        result["grid"] = str(grid)
    emit(result if as_json else _readable(result), as_json=as_json, title=f"dataset {name}")


def _readable(result: dict[str, Any]) -> dict[str, Any]:
    """The info dict trimmed for a terminal table."""
    shown = {k: v for k, v in result.items() if k not in ("split_files", "class_names", "files")}
    names = result.get("class_names") or []
    if names:
        shown["class_names"] = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return shown


@app.command("download")
@handle_errors
def download_cmd(
    name: str = typer.Argument(..., help=f"Dataset to fetch: {', '.join(DOWNLOADABLE)}."),
    data_root: Path | None = DATA_ROOT_OPTION,
    split: str | None = typer.Option(None, "--split", help="Only this split ('train' or 'test'); default both."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Fetch from this URL (http(s):// or file://) instead of the official mirrors."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Download a dataset's official files into the data root, checking their MD5 sums.

    Files already present with the right checksum are skipped; a corrupt download replaces nothing.

    Example: genprov data download fashion-mnist --data-root ../shared/data
    """
    info = dataset_info(name)
    written = download(name, data_root, base_url=base_url, split=split)
    wanted = list(info.split_files[split]) if split is not None else list(info.files)
    fetched = {p.name for p in written}
    present = [rel for rel in wanted if Path(rel).name not in fetched]
    if as_json:
        emit({"name": name, "downloaded": [str(p) for p in written], "already_present": present}, as_json=True)
    else:
        console.print(f"{name}: downloaded {len(written)} file(s); {len(present)} already present and valid.")
