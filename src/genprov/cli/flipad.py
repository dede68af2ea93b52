"""``genprov flipad``: "was this image made by my generator?" (FLIPAD single-model attribution).

``fit`` samples the owner's GAN checkpoint (or text-to-image pipeline folder, from ``--prompt``), fits an
attributor (FLIPAD or a baseline) against real images (and optional images known to come from elsewhere) and
saves it; ``score`` loads it and gives a verdict, a score and the threshold for every image. For a pipeline the
generator is its VAE (FLIPAD inverts ``decoder.conv_out``; ``--method aeroblade`` is the training-free
reconstruction error); its detector records the VAE's fingerprint, so ``score`` takes the pipeline again with
``--generator``. The method's parameters come from its config class
(``genprov.attribution.model``): set any of them with ``--set KEY=VALUE``.

``score --backend ray [--address auto|HOST:PORT] [--workers N]`` scores one image collection (a folder, tar shards
``a-{000..009}.tar`` or a list file of them, parquet files, an ``.npz``, an LMDB) as Ray tasks that read their
images and reopen the detector themselves (``genprov.attribution.model.score_shards``); tar shards and parquet files
are scored that way in this process too. The scores equal the in-process ones; ``--store DIR`` keeps them shard by
shard so an interrupted run resumes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import typer

from genprov.attribution.model import MODEL_ATTRIBUTORS, ModelAttributor
from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS, FinalLayerInversionAttributorConfig
from genprov.attribution.model.score_shards import (
    SCORE_SHARD_ROWS,
    load_gan_checkpoint,
    open_detector,
    score_collection,
)
from genprov.cli.common import (
    ADDRESS_OPTION,
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    backend_option,
    console,
    emit,
    handle_errors,
    merge_dicts,
    parse_sets,
    workers_option,
)
from genprov.config import Config
from genprov.data import expand_image_paths, load_dataset, load_images, png_roundtrip
from genprov.data.collections import collection_spec, is_collection_only
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.gans import GANConfig
from genprov.models.sampling import sample
from genprov.models.t2i import is_pipeline_folder, load_pipeline, sample_pipeline
from genprov.results import ModelAttributionResult
from genprov.storage.shards import make_backend
from genprov.utils.artifacts import INCOMPLETE_STORE, check_output_folder, identify_artifact
from genprov.utils.io import read_json

app = typer.Typer(
    help="Single-model attribution with FLIPAD: fit a detector for your GAN or text-to-image pipeline, then ask "
    "whether images came from it.\n\nExample: genprov flipad fit --generator runs/dcgan --real digits --out "
    "runs/dcgan-flipad && genprov flipad score --detector runs/dcgan-flipad suspect/*.png",
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


#: DDIM steps of the pipeline samples ``fit`` draws (``genprov sample``'s default for pipelines).
PIPELINE_SAMPLE_STEPS = 50


class _Owner:
    """The owner's model as the command opened it: a GAN checkpoint or a pipeline (whose VAE is the generator)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pipeline: Any = load_pipeline(path) if is_pipeline_folder(path) else None
        if self.pipeline is not None:
            vae = self.pipeline.vae
            self.model: torch.nn.Module = vae
            self.size, self.channels = int(vae.config.sample_size), int(vae.config.in_channels)
        else:
            ckpt = load_gan_checkpoint(path)
            assert isinstance(ckpt.model_config, GANConfig)
            self.model, self.size, self.channels = ckpt.model, ckpt.model_config.image_size, ckpt.model_config.channels

    def samples(self, n: int, seed: int, prompts: list[str], steps: int) -> torch.Tensor:
        """``n`` 8-bit quantised samples (a pipeline's from ``prompts``, in turn)."""
        if self.pipeline is None:
            return png_roundtrip(sample(self.model, n, seed=seed))
        per_prompt = math.ceil(n / len(prompts))
        return png_roundtrip(sample_pipeline(self.pipeline, prompts, per_prompt, seed=seed, steps=steps)[:n])


def _check_prompts(generator: Path, prompts: list[str], is_pipeline: bool) -> None:
    if is_pipeline and not prompts:
        raise ConfigError(
            f"{generator} is a text-to-image pipeline; give the prompts its owner generates from with --prompt TEXT "
            "(repeatable)."
        )
    if prompts and not is_pipeline:
        raise ConfigError(
            f"--prompt needs a text-to-image pipeline folder; {generator} is not one (no model_index.json)."
        )


@app.command("fit")
@handle_errors
def fit_cmd(
    generator: Path = typer.Option(
        ...,
        "--generator",
        help="The owner's GAN checkpoint folder (genprov train gan) or text-to-image pipeline folder (genprov train "
        "t2i; its VAE is the generator).",
    ),
    real: str = typer.Option(
        ...,
        "--real",
        help="Real images the GAN was not (or was) trained on: a dataset name (digits, mnist, ...) or a path.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to save the fitted detector to (created)."),
    negatives: list[Path] = typer.Option(
        [], "--negatives", help="Folder(s) of images known to come from elsewhere (other generators); repeatable."
    ),
    method: str = typer.Option(
        "flipad", "--method", help="flipad, raw-pixels, dct, prnu, latent-inversion (GANs) or aeroblade (pipelines)."
    ),
    n_samples: int = typer.Option(1000, "--n-samples", help="Generator samples to fit on (20% set the threshold)."),
    prompts: list[str] = typer.Option(
        [], "--prompt", help="Pipelines: a prompt the owner generates from (repeatable; samples cycle through them)."
    ),
    pipeline_steps: int = typer.Option(
        PIPELINE_SAMPLE_STEPS, "--sample-steps", min=1, help="Pipelines: DDIM steps of every sample."
    ),
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
    """Fit a single-model attributor for a GAN checkpoint or a text-to-image pipeline and save it.

    The generator's samples (8-bit quantised, like saved images) are the positives; the real images (and
    --negatives) the negatives. The threshold keeps 99.5% of held-out generator samples (--set fnr=...).
    For a pipeline (drawn from --prompt), the generator is its VAE: FLIPAD inverts decoder.conv_out.

    Example: genprov flipad fit --generator runs/dcgan --real digits --negatives runs/other-gan-samples --out runs/det
    Example: genprov flipad fit --generator runs/t2i --prompt "a photo of a horse" --real cifar2 --out runs/t2i-det
    """
    if n_samples < 10:
        raise ConfigError(f"--n-samples must be at least 10; got {n_samples}.")
    check_output_folder(out)
    _check_prompts(generator, prompts, is_pipeline_folder(generator))
    owner = _Owner(generator)
    size, channels = owner.size, owner.channels
    config = _method_config(method, seed, sets)
    attributor = MODEL_ATTRIBUTORS.create(method, owner.model, config=config)
    own = owner.samples(n_samples, seed, prompts, pipeline_steps)
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


def _load_detector(detector: Path, given: Path | None = None) -> tuple[ModelAttributor, dict[str, Any], Path | None]:
    """The detector (its generator reopened from the checkpoint its config.json records, or ``given``: a GAN
    checkpoint or pipeline folder), its image size, and where its generator was reopened from (``None``: the
    recorded checkpoint)."""
    if not (detector / "config.json").is_file():  # an unreadable one is reported by the reader as such
        found = identify_artifact(detector)
        holds = f"it holds {found.describe()}" if found else "no detector config.json in it"
        raise CheckpointError(f"{detector} is not a detector ({holds}). Fit one first: 'genprov flipad fit'.")
    legacy = detector / LEGACY_CLI_FILE
    source = given
    if source is None and legacy.is_file():
        source = Path(read_json(legacy)["generator"])
    if source is None:
        ref = (read_json(detector / "config.json").get("wraps") or {}).get("generator") or {}
        if ref and not ref.get("checkpoint"):
            raise CheckpointError(
                f"{detector} was fitted on a generator that is not a genprov checkpoint (a text-to-image pipeline's "
                "VAE); give that pipeline folder with --generator PIPELINE (its weights are checked)."
            )
    attributor = open_detector(detector, source)
    channels, size = attributor.input_shape_[0], attributor.input_shape_[-1]
    return attributor, {"method": attributor.name, "image_size": size, "channels": channels}, source


@app.command("score")
@handle_errors
def score_cmd(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images to check."),
    detector: Path = typer.Option(..., "--detector", help="Folder written by 'genprov flipad fit'."),
    generator: Path | None = typer.Option(
        None,
        "--generator",
        help="The pipeline folder a detector of a text-to-image pipeline was fitted on (or a GAN checkpoint, "
        "overriding the recorded one); its weights must be those the detector was fitted on.",
    ),
    backend: str = backend_option(
        "the images are scored", "tasks that read a range of the collection and reopen the detector", "The scores"
    ),
    address: str | None = ADDRESS_OPTION,
    workers: int = workers_option("shards scored"),
    store: Path | None = typer.Option(
        None,
        "--store",
        help="With a collection: keep the scores shard by shard in this folder, so an interrupted run resumes "
        "(default: a temporary folder).",
    ),
    rows_per_shard: int = typer.Option(
        SCORE_SHARD_ROWS,
        "--shard-size",
        min=1,
        help="With a collection: images per shard (rounded up to a multiple of the detector's batch size, so that "
        "the shards invert the batches one call would: the scores are then the same).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Say for every image whether the detector's generator made it (verdict, score, threshold).

    Images are resized to the generator's size; a score at or above the threshold means "made by it".
    With --backend ray, IMAGES is one collection (a folder, tar shards as 'a-{000..009}.tar' or a list file,
    parquet files, an .npz, an LMDB folder) whose images the Ray tasks read themselves; tar shards and parquet
    files are read that way in this process too.

    Example: genprov flipad score --detector runs/det suspect/*.png --json
    Example: genprov flipad score --detector runs/t2i-det --generator runs/t2i suspect/*.png
    Example: genprov flipad score --detector runs/det 'suspect/part-{0000..0099}.tar' --backend ray --workers 8 --json
    """
    runner = make_backend(backend, address=address, workers=workers)
    sharded = backend == "ray" or any(is_collection_only(path) for path in images)
    if not sharded and store is not None:
        raise ConfigError("--store keeps the scores of a collection; add --backend ray, or drop --store.")
    attributor, info, source = _load_detector(detector, generator)
    if sharded:
        if len(images) != 1:
            raise ConfigError(
                f"--backend ray and tar / parquet collections take one IMAGES source (a folder, a shard pattern or list "
                f"file, an .npz, an LMDB); got {len(images)}. Put the images in one folder or list file."
            )
        if store is not None:
            check_output_folder(store, accept={"feature store", INCOMPLETE_STORE}, option="--store")
        result, collection = score_collection(
            detector,
            collection_spec(images[0]),
            runner,
            generator=source,
            store=store,
            shard_size=rows_per_shard,
            attributor=attributor,
        )
        names: list[str] = collection.names()
    else:
        files = expand_image_paths(images)
        x = load_images(files, size=int(info["image_size"]), channels=int(info["channels"]))
        result = attributor.attribute(x)
        names = [str(path) for path in files]
    _print_verdicts(names, result, as_json)


def _print_verdicts(names: list[str], result: ModelAttributionResult, as_json: bool) -> None:
    """One row per image: verdict, score, threshold (JSON, or a table and a count)."""
    rows = [
        {
            "path": name,
            "verdict": "made by the generator" if verdict else "not made by the generator",
            "attributed": bool(verdict),
            "score": float(score),
            "threshold": float(result.threshold),
        }
        for name, score, verdict in zip(names, result.scores, result.verdicts, strict=True)
    ]
    if as_json:
        emit(rows, as_json=True)
    else:
        emit([{k: v for k, v in row.items() if k != "attributed"} for row in rows], as_json=False, title="verdicts")
        n_claimed = int(result.verdicts.sum())
        console.print(f"{n_claimed} of {len(rows)} image(s) attributed to the generator.")
