"""``genprov flipad``: "was this image made by my generator?" (FLIPAD single-model attribution).

``fit`` samples the owner's GAN checkpoint, fits an attributor (FLIPAD or a baseline) against real images
(and optional images known to come from elsewhere) and saves it; ``score`` loads it and gives a verdict,
a score and the threshold for every image. The method's parameters come from its config class
(``genprov.attribution.model``): set any of them with ``--set KEY=VALUE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import typer

from genprov.attribution.model import MODEL_ATTRIBUTORS, ModelAttributor
from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS, FinalLayerInversionAttributorConfig
from genprov.cli.common import (
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    console,
    emit,
    handle_errors,
    merge_dicts,
    parse_sets,
)
from genprov.config import Config
from genprov.data import expand_image_paths, load_dataset, load_images, png_roundtrip
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.checkpoints import LoadedCheckpoint, load_checkpoint
from genprov.models.gans import GANConfig
from genprov.models.sampling import sample
from genprov.utils.artifacts import check_output_folder, identify_artifact
from genprov.utils.io import read_json

app = typer.Typer(
    help="Single-model attribution with FLIPAD: fit a detector for your GAN, then ask whether images came from "
    "it.\n\nExample: genprov flipad fit --generator runs/dcgan --real digits --out runs/dcgan-flipad && "
    "genprov flipad score --detector runs/dcgan-flipad suspect/*.png",
    no_args_is_help=True,
    add_completion=False,
)

#: Sidecar of detectors fitted before their config.json recorded the generator's checkpoint (read only).
LEGACY_CLI_FILE = "cli.json"
#: Method settings this command starts from where they differ from the config class's defaults.
_COMMAND_SETTINGS: dict[str, dict[str, Any]] = {"flipad": FLIPAD_IMAGE_SETTINGS}
_FLIPAD_SETTINGS_HELP = (
    "FLIPAD starts from the settings its study chose for 8-bit images, "
    + ", ".join(f"{k}={v}" for k, v in FLIPAD_IMAGE_SETTINGS.items())
    + " (FinalLayerInversionAttributorConfig's defaults, the paper's: "
    + ", ".join(f"{k}={getattr(FinalLayerInversionAttributorConfig(), k)}" for k in FLIPAD_IMAGE_SETTINGS)
    + ")."
)


def _method_config(method: str, seed: int, sets: list[str]) -> Config | None:
    config_type = MODEL_ATTRIBUTORS.config_type(method)
    if config_type is None:  # pragma: no cover - every attributor has a config
        return None
    base = merge_dicts({**config_type().to_dict(), "seed": seed}, _COMMAND_SETTINGS.get(method, {}))
    return config_type.from_dict(merge_dicts(base, parse_sets(sets)))


def _image_generator(path: Path) -> LoadedCheckpoint:
    ckpt = load_checkpoint(path)
    if ckpt.kind != "gan" or not isinstance(ckpt.model_config, GANConfig):
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint; 'genprov flipad' works on image GANs (train one with "
            "'genprov train gan'). For tabular generators use the Python API "
            "(genprov.attribution.model.FinalLayerInversionAttributor)."
        )
    return ckpt


@app.command("fit")
@handle_errors
def fit_cmd(
    generator: Path = typer.Option(..., "--generator", help="The owner's GAN checkpoint folder (genprov train gan)."),
    real: str = typer.Option(
        ...,
        "--real",
        help="Real images the GAN was not (or was) trained on: a dataset name (digits, mnist, ...) or a path.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to save the fitted detector to (created)."),
    negatives: list[Path] = typer.Option(
        [], "--negatives", help="Folder(s) of images known to come from elsewhere (other generators); repeatable."
    ),
    method: str = typer.Option("flipad", "--method", help="flipad, raw-pixels, dct, prnu or latent-inversion."),
    n_samples: int = typer.Option(1000, "--n-samples", help="Generator samples to fit on (20% set the threshold)."),
    n_real: int = typer.Option(1000, "--n-real", min=1, help="Real images to fit on (at most)."),
    sets: list[str] = typer.Option(
        [],
        "--set",
        help="Any method parameter, KEY=VALUE (JSON), e.g. --set alpha=0.001 --set detector.n_epochs=10. "
        + _FLIPAD_SETTINGS_HELP,
    ),
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit a single-model attributor for a GAN checkpoint and save it.

    The generator's samples (8-bit quantised, like saved images) are the positives; the real images (and
    --negatives) the negatives. The threshold keeps 99.5% of held-out generator samples (--set fnr=...).

    Example: genprov flipad fit --generator runs/dcgan --real digits --negatives runs/other-gan-samples --out runs/det
    """
    if n_samples < 10:
        raise ConfigError(f"--n-samples must be at least 10; got {n_samples}.")
    check_output_folder(out)
    ckpt = _image_generator(generator)
    model_config = ckpt.model_config
    assert isinstance(model_config, GANConfig)
    size, channels = model_config.image_size, model_config.channels
    config = _method_config(method, seed, sets)
    attributor = MODEL_ATTRIBUTORS.create(method, ckpt.model, config=config)
    own = png_roundtrip(sample(ckpt.model, n_samples, seed=seed))
    parts = [load_dataset(real, data_root=data_root, resize=size, n=None, seed=seed).images]
    parts += [load_dataset(str(folder), resize=size).images for folder in negatives]
    for part, name in zip(parts, [real, *map(str, negatives)], strict=True):
        if part.shape[1] != channels:
            raise DataError(
                f"{name} has {part.shape[1]}-channel images but the generator makes {channels}-channel ones; "
                "use images of the generator's kind."
            )
    real_images = parts[0]
    if len(real_images) > n_real:
        order = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(seed))[:n_real]
        real_images = real_images[order]
    negative_images = png_roundtrip(torch.cat([real_images, *parts[1:]]))
    attributor.fit(own, negatives=negative_images)
    attributor.save_pretrained(out)  # its config.json records the generator's checkpoint
    summary = {
        "detector": str(out),
        "method": method,
        "generator": str(generator),
        "own samples": n_samples,
        "negatives": len(negative_images),
        "threshold": attributor.threshold_,
        "fnr": attributor.config.fnr,
    }
    emit(summary, as_json=as_json, title="fitted attributor")


def _load_detector(detector: Path) -> tuple[ModelAttributor, dict[str, Any]]:
    """The detector (its generator reopened from the checkpoint its config.json records) and its image size."""
    if not (detector / "config.json").is_file():  # an unreadable one is reported by the reader as such
        found = identify_artifact(detector)
        holds = f"it holds {found.describe()}" if found else "no detector config.json in it"
        raise CheckpointError(f"{detector} is not a detector ({holds}). Fit one first: 'genprov flipad fit'.")
    legacy = detector / LEGACY_CLI_FILE
    generator = _image_generator(Path(read_json(legacy)["generator"])).model if legacy.is_file() else None
    attributor = ModelAttributor.from_pretrained(detector, generator)
    channels, size = attributor.input_shape_[0], attributor.input_shape_[-1]
    return attributor, {"method": attributor.name, "image_size": size, "channels": channels}


@app.command("score")
@handle_errors
def score_cmd(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images to check."),
    detector: Path = typer.Option(..., "--detector", help="Folder written by 'genprov flipad fit'."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Say for every image whether the detector's generator made it (verdict, score, threshold).

    Images are resized to the generator's size; a score at or above the threshold means "made by it".

    Example: genprov flipad score --detector runs/det suspect/*.png --json
    """
    attributor, info = _load_detector(detector)
    files = expand_image_paths(images)
    x = load_images(files, size=int(info["image_size"]), channels=int(info["channels"]))
    result = attributor.attribute(x)
    rows = [
        {
            "path": str(path),
            "verdict": "made by the generator" if verdict else "not made by the generator",
            "attributed": bool(verdict),
            "score": float(score),
            "threshold": float(result.threshold),
        }
        for path, score, verdict in zip(files, result.scores, result.verdicts, strict=True)
    ]
    if as_json:
        emit(rows, as_json=True)
    else:
        emit([{k: v for k, v in row.items() if k != "attributed"} for row in rows], as_json=False, title="verdicts")
        n_claimed = int(result.verdicts.sum())
        console.print(f"{n_claimed} of {len(rows)} image(s) attributed to the generator.")
