"""``genprov keyed``: "which of my user models made this?" (keyed generators, Kim et al., ICLR 2021).

``create`` fine-tunes keyed copies of a GAN checkpoint (one key per user model) into a family folder
(resumable: run it again to finish or grow a family); ``attribute`` says for every image which user model
made it, or that none (or several) of the keys claim it. Training parameters come from
:class:`~genprov.attribution.model.keyed.KeyedGeneratorsConfig`: set any of them with ``--set KEY=VALUE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from genprov.attribution.model.keyed import (
    KeyedAttributionResult,
    KeyedGenerators,
    KeyedGeneratorsConfig,
    attribution_rule,
)
from genprov.cli.common import (
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    config_option,
    console,
    emit,
    handle_errors,
    parse_sets,
)
from genprov.data import expand_image_paths, image_sizes, load_images, png_roundtrip
from genprov.exceptions import DataError
from genprov.utils.artifacts import check_output_file, check_output_folder

app = typer.Typer(
    help="Decentralized attribution with keyed generators: give each user a keyed copy of your GAN, then tell "
    "which copy made an image.\n\nExample: genprov keyed create --root runs/dcgan --n-keys 10 --out runs/family && "
    "genprov keyed attribute --family runs/family suspect/*.png",
    no_args_is_help=True,
    add_completion=False,
)

#: Samples per user model in the self-check ``create`` prints.
_N_CHECK = 200


def _config(seed: int, data: str, robust: str, sets: list[str]) -> KeyedGeneratorsConfig:
    values: dict[str, Any] = {"seed": seed, "data": data}
    if robust:
        values["robust"] = [name.strip() for name in robust.split(",") if name.strip()]
    return KeyedGeneratorsConfig.from_dict({**values, **parse_sets(sets)})


@app.command("create")
@handle_errors
def create_cmd(
    root: Path = typer.Option(..., "--root", help="The root GAN checkpoint folder (genprov train gan)."),
    n_keys: int = typer.Option(..., "--n-keys", help="Number of keys, i.e. user models."),
    out: Path = typer.Option(..., "--out", help="Family folder (created; an unfinished one is resumed)."),
    robust: str = config_option(
        KeyedGeneratorsConfig,
        "robust",
        "--robust",
        help="Comma-separated post-processes to be robust to: blur, crop, noise, jpeg, combination.",
    ),
    data: str = config_option(
        KeyedGeneratorsConfig,
        "data",
        "--data",
        help="Authentic images the keys must comply with: a dataset name or a folder.",
    ),
    data_root: Path | None = DATA_ROOT_OPTION,
    sets: list[str] = typer.Option(
        [], "--set", help="Any training parameter, KEY=VALUE (JSON), e.g. --set user_steps=3000 --set alpha=10."
    ),
    seed: int = SEED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a family of keyed user models of a GAN checkpoint.

    The first key is trained alternately with its user model; every further key is data-compliant and
    orthogonal to the earlier ones; each user model is a copy of the root fine-tuned to push its samples
    across its key (--set user_steps=N iterations, 3000 by default). With --robust, each user model is then
    fine-tuned with those post-processes applied on half the batches. Prints a self-check: the share of
    each user model's PNG-saved samples attributed to it alone.

    Example: genprov keyed create --root runs/dcgan --n-keys 10 --robust blur,crop --out runs/family
    """
    config = _config(seed, data, robust, sets)
    family = KeyedGenerators.create(root, n_keys, config, out=out, data_root=data_root)
    check_seed = seed + 1
    own = [
        attribution_rule(family.responses(png_roundtrip(family.sample(i, _N_CHECK, seed=check_seed))))
        for i in range(n_keys)
    ]
    summary = {
        "family": str(out),
        "root": str(root),
        "keys": family.n_keys,
        "robust": ",".join(config.robust) or "none",
        "self-check attributability": float(np.mean([(labels == i).mean() for i, labels in enumerate(own)])),
        "smallest key angle": float(np.min(family.angles() + np.eye(family.n_keys) * 360)) if n_keys > 1 else None,
        "warnings": family.warnings,
    }
    emit(summary, as_json=as_json, title="keyed family")


@app.command("attribute")
@handle_errors
def attribute_cmd(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images to attribute."),
    family: Path = typer.Option(..., "--family", help="Folder written by 'genprov keyed create'."),
    out: Path | None = typer.Option(
        None, "--out", help="Also save the result: OUT.npz (users, responses) and OUT.json (the rest)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Say for every image which user model made it: user-<i>, none, or ambiguous.

    An image belongs to user i when key i's response is negative and every other key's is positive; no
    negative response means none (authentic, or a model outside the family), several mean ambiguous.
    Images must have the family's size (they are not resized: resizing would erase the keys' signal).

    Example: genprov keyed attribute --family runs/family suspect/*.png --json
    """
    if out is not None:  # refused before any work: never over an existing file or into another artefact
        check_output_folder(out.parent)
        for path in KeyedAttributionResult.files(out):
            check_output_file(path)
    fam = KeyedGenerators.from_pretrained(family)
    files = expand_image_paths(images)
    channels, height, width = fam.image_shape
    for path, (w, h) in zip(files, image_sizes(files), strict=True):
        if (w, h) != (width, height):
            raise DataError(
                f"{path} is {w}x{h} pixels but the family's models make {width}x{height} images; keyed attribution "
                "reads images only at that size (resizing or cropping would erase the keys' signal). Pass the "
                "images as the models saved them."
            )
    result = fam.attribute(load_images(files, channels=channels))
    if out is not None:
        result.save(out)
    rows = [
        {
            "path": str(path),
            "attribution": label,
            "user": int(user) if user >= 0 else None,
            "responses": [round(float(r), 4) for r in responses],
        }
        for path, label, user, responses in zip(files, result.labels, result.users, result.responses, strict=True)
    ]
    if as_json:
        emit(rows, as_json=True)
        return
    table = [
        {"path": str(path), "attribution": label, "responses": " ".join(f"{r:+.2f}" for r in responses)}
        for path, label, responses in zip(files, result.labels, result.responses, strict=True)
    ]
    emit(
        table,
        as_json=False,
        title=f"attribution to {fam.n_keys} user models",
    )
    counts = ", ".join(f"{k}: {v}" for k, v in result.counts().items() if v)
    console.print(f"{len(rows)} images -> {counts}")
