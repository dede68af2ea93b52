"""``genprov similarity``: which training images is a generated image built on, by feature similarity.

``index`` featurizes a training set with a feature extractor into a resumable index folder and records in
its ``config.json`` (the artefact ``similarity-index``) everything needed to rebuild the attributor
(extractor name, config and weights by place and content, mapper, calibration, image shape, training data
spec and fingerprint); ``tune`` trains a feature mapper on a
customization benchmark (the folder ``genprov reproduce similarity`` writes under ``customizations/``) and
calibrates the soft attribution; ``query`` attributes image files against an index: JSON, an ``.npz`` and
HTML galleries in which each training image is drawn with an area proportional to its share of influence. ``query
--pipeline DIR [--lora DIR] --prompt TEXT --n N`` first draws the queries from a text-to-image pipeline (e.g. a
customization: its base and LoRA with the token's prompt) and records each one's prompt. ``index`` takes no pipeline:
the index holds training images and their features, whatever model is later asked about.

``index --backend ray [--address auto|HOST:PORT] [--workers N]`` embeds the training collection as Ray tasks, each
reading its range of images (a data set, an image folder, tar shards ``a-{000..009}.tar`` or a list file, parquet
files, an ``.npz``, an LMDB) and rebuilding the extractor itself; tar shards and parquet files are embedded that way
in this process too (``index_folder.index_collection``). The features equal the in-process ones, and an
interrupted build resumes.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import torch
import typer

from genprov.attribution.data.index_folder import (
    build_similarity_index,
    index_collection,
    open_similarity_index,
    read_index_info,
)
from genprov.attribution.data.mapper import TuningConfig
from genprov.attribution.data.similarity import SimilarityAttributor, SimilarityConfig
from genprov.cli.common import (
    ADDRESS_OPTION,
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    backend_option,
    config_option,
    console,
    emit,
    handle_errors,
    parse_sets,
    workers_option,
)
from genprov.data import load_images, save_images
from genprov.data.collections import is_collection_only
from genprov.data.images import IMAGE_EXTENSIONS
from genprov.eval.customization import N_VAL_CLASSES, TUNING_GRID, tune_on_customizations
from genprov.exceptions import ConfigError, DataError
from genprov.models.t2i import open_pipeline, sample_pipeline
from genprov.report import Gallery, GalleryRow, Report, Section, Text
from genprov.report.figures import to_png_bytes
from genprov.storage.shards import make_backend
from genprov.utils.artifacts import INCOMPLETE_INDEX, check_output_file, check_output_folder
from genprov.utils.io import atomic_write_json, atomic_write_text

app = typer.Typer(
    help="Data attribution by feature similarity: index a training set, optionally tune the features on a "
    "customization benchmark, then ask which training images a generated image is built on (with soft shares of "
    "influence).\n\nExample: genprov similarity index --extractor pixels --data digits --store runs/sim && "
    "genprov similarity query --store runs/sim sample.png --top-k 20 --out runs/why",
    no_args_is_help=True,
    add_completion=False,
)

#: Denoising steps of the queries ``query --pipeline`` draws (the diffusers pipelines' default, as ``genprov flipad
#: fit`` draws its pipeline samples).
QUERY_SAMPLE_STEPS = 50

SETS_OPTION = typer.Option(
    [],
    "--set",
    help="Extractor config KEY=VALUE (JSON values), e.g. --set batch_size=64; 'similarity.KEY=VALUE' sets a "
    "SimilarityConfig field (e.g. similarity.shard_size=4096).",
)


def _split_sets(sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    values = parse_sets(sets)
    similarity = values.pop("similarity", {})
    if not isinstance(similarity, dict):
        raise DataError("--set similarity takes sub-keys, e.g. --set similarity.shard_size=4096.")
    return values, similarity


@app.command("index")
@handle_errors
def index_cmd(
    extractor: str = typer.Option(
        ..., "--extractor", help="pixels, classifier, simclr, random-cnn, local-weights or efficientnet-lite0."
    ),
    data: str = typer.Option(
        ...,
        "--data",
        help="Training images: dataset name (digits, mnist, ...) or path (image folder, .npz, LMDB folder, tar shards "
        "as 'a-{000..009}.tar' or a .txt list of them, parquet files with an image-bytes column).",
    ),
    store: Path = typer.Option(..., "--store", help="Index folder (created; an unfinished build is resumed)."),
    split: str = typer.Option("train", "--split", help="Dataset split to attribute to."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a seeded random subset of N training images."),
    resize: int | None = typer.Option(
        None,
        "--resize",
        min=1,
        help="Resize training images to SIZE x SIZE (default: native; a classifier's own size).",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="classifier: checkpoint folder; simclr: saved encoder (.safetensors; default: train one on the data); "
        "local-weights / efficientnet-lite0: weights file.",
    ),
    mapper: Path | None = typer.Option(
        None, "--mapper", help="A tuned feature mapper from 'genprov similarity tune' (tuned index)."
    ),
    faiss: bool = typer.Option(
        False, "--faiss", help="Also build a FAISS index: of the --search kind, HNSW otherwise (needs genprov[faiss])."
    ),
    search: str | None = config_option(
        SimilarityConfig,
        "search",
        "--search",
        default=None,
        help="Search recorded for the index: exact, faiss, hnsw or ivfpq; hnsw and ivfpq build and save that FAISS "
        "index (ivfpq: compressed codes, k-means seeded by --seed; reused when rows and settings are unchanged). "
        "Default: exact.",
    ),
    n_probe: int | None = config_option(SimilarityConfig, "n_probe", "--nprobe", default=None, min=1),
    backend: str = backend_option(
        "the shards are embedded", "tasks that read their range of --data and rebuild the extractor", "The features"
    ),
    address: str | None = ADDRESS_OPTION,
    workers: int = workers_option("shards embedded"),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Featurize a training set into a similarity index folder (resumable) and record how to rebuild it.

    With --backend ray (or tar shards / parquet files as --data) the shard tasks read their own range of images,
    so this process never holds the training set.

    Example: genprov similarity index --extractor classifier --checkpoint runs/clf --data digits --store runs/sim

    Example: genprov similarity index --extractor random-cnn --data 'laion/part-{0000..0099}.tar' --resize 64
    --store runs/sim-laion --backend ray --address auto --workers 16
    """
    check_output_folder(store, accept={"similarity index", "feature index", INCOMPLETE_INDEX}, option="--store")
    runner = make_backend(backend, address=address, workers=workers)
    extractor_config, similarity_config = _split_sets(sets)
    similarity_config.update(_set_fields(search=search, n_probe=n_probe))
    data_spec = {
        "name": data,
        "split": split,
        "n": n,
        "seed": seed,
        "resize": resize,
        "data_root": str(data_root) if data_root is not None else None,
    }
    options: dict[str, Any] = {
        "extractor_config": extractor_config,
        "weights": str(checkpoint) if checkpoint is not None else None,
        "mapper": str(mapper) if mapper is not None else None,
        "similarity_config": similarity_config,
        "faiss": faiss,
    }
    if backend == "ray" or is_collection_only(data):
        attributor, images, record = index_collection(extractor, store, data_spec, runner, **options)
        n_train = len(images)
    else:
        attributor, train, record = build_similarity_index(extractor, store, data_spec, **options)
        n_train = len(train)
    channels, image_size, _ = record.state["image_shape"]
    summary = {
        "store": str(store),
        "method": attributor.method,
        "n_train": n_train,
        "image_size": image_size,
        "channels": channels,
        "feature_dim": attributor.index_.dim if attributor.index_ is not None else None,
        "calibrated": record.state["calibration"] is not None,
        **_faiss_summary(attributor),
    }
    emit(summary, as_json=as_json, title="similarity index")


def _set_fields(**values: Any) -> dict[str, Any]:
    """The options given (not None), as SimilarityConfig changes."""
    return {name: value for name, value in values.items() if value is not None}


def _faiss_summary(attributor: SimilarityAttributor) -> dict[str, Any]:
    """The saved FAISS index's kind and size next to the float32 features' (nothing when none was built)."""
    index = attributor.index_
    saved = index.meta.get("faiss") if index is not None else None
    if index is None or not saved or "bytes" not in saved:
        return {}
    features = int(saved["n_rows"]) * index.dim * 4
    return {
        "faiss_index": saved["kind"],
        "faiss_index_mb": round(int(saved["bytes"]) / 2**20, 3),
        "features_mb": round(features / 2**20, 3),
        "faiss_fraction_of_features": round(int(saved["bytes"]) / max(features, 1), 4),
    }


@app.command("tune")
@handle_errors
def tune_cmd(
    store: Path = typer.Option(..., "--store", help="An untuned index ('genprov similarity index'): extractor + pool."),
    customizations: Path = typer.Option(
        ...,
        "--customizations",
        help="Customization benchmark folder with manifest.json (e.g. <reproduce out>/customizations).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder for the tuned mapper (an artefact); its calibration and summary go to OUT.json beside it.",
    ),
    n_val_classes: int = typer.Option(
        N_VAL_CLASSES, "--n-val-classes", min=1, help="Seen classes held out for early stopping."
    ),
    grid: bool = typer.Option(
        False,
        "--grid",
        help="Also try the learning rates / tower settings of 'genprov reproduce similarity' and keep the mapper "
        "with the best validation mAP.",
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="TuningConfig KEY=VALUE, e.g. --set mapper=mlp --set max_steps=1000."
    ),
    seed: int = SEED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Tune a feature mapper on a benchmark's seen customizations and calibrate the soft attribution.

    The mapper early-stops on the validation mAP of held-out seen classes; the soft attribution's two scalars
    are fitted on the same validation queries. Index the training set again with --mapper to use it.

    Example: genprov similarity tune --store runs/sim --customizations runs/repro/customizations --out runs/mapper
    """
    sidecar = Path(f"{out}.json")
    check_output_folder(out)  # the mapper is an artefact folder
    check_output_file(sidecar)
    if read_index_info(store).state.get("mapper"):
        raise DataError(f"{store} is already a tuned index; tune on an untuned one (index without --mapper).")
    untuned, train, record = open_similarity_index(store)
    config = TuningConfig.from_dict({"seed": seed, **parse_sets(sets)})
    mapper, calibration, summary = tune_on_customizations(
        untuned.feature_extractor,
        train.images,
        customizations,
        config,
        n_val_classes=n_val_classes,
        seed=seed,
        grid=TUNING_GRID if grid else (),
    )
    mapper.save_pretrained(out)
    atomic_write_json(
        sidecar,
        {
            "calibration": calibration.to_dict(),
            "extractor": record.state["extractor"]["name"],
            "store": str(store),
            "customizations": str(customizations),
            **summary,
        },
    )
    emit({"mapper": str(out), "sidecar": str(sidecar), **summary}, as_json=as_json, title="tuned mapper")


def _query_images(paths: list[Path], *, size: int, channels: int, convert: bool) -> torch.Tensor:
    """Read query files, resized to the index's size; a channel mismatch is an error unless ``convert``."""
    if not paths:
        raise DataError("No query images given; pass one or more image files.")
    images = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"Query image {path} does not exist.")
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)}).")
        x = load_images([path], size=size)
        if x.shape[1] != channels:
            if not convert:
                raise DataError(
                    f"{path} has {x.shape[1]} channel(s) but the index holds {channels}-channel images; pass --convert "
                    f"to convert it to {'grey' if channels == 1 else 'RGB'}, or query with a matching image."
                )
            x = load_images([path], size=size, channels=channels)
        images.append(x)
    return torch.cat(images)


def _data_uri(image: torch.Tensor, scale: int) -> str:
    png = to_png_bytes(image, scale=scale)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def sized_gallery_html(
    title: str,
    queries: list[tuple[str, torch.Tensor, list[dict[str, Any]], float]],
    train_images: torch.Tensor,
    *,
    max_px: int = 220,
) -> str:
    """A self-contained HTML page: per query, its top training images drawn with area ∝ share of influence.

    Args:
        title: Page title.
        queries: ``(name, image (C, H, W), top [{"index", "score", "share"}], remaining share)`` per query.
        train_images: (n, C, H, W) the training set the indices point into.
        max_px: Side of an image holding all the influence (share 1).
    """
    side = int(train_images.shape[-1])
    scale = max(1, math.ceil(max_px / side))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
        ".q{display:flex;gap:18px;align-items:flex-end;margin:18px 0;padding-bottom:12px;border-bottom:1px solid #ddd}"
        ".t{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}figure{margin:0;text-align:center}"
        "img{image-rendering:pixelated;border:1px solid #ccc}figcaption{font-size:11px;color:#555}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        "<p>Each training image is drawn with an area proportional to its share of influence on the query "
        "(soft attribution); the rest of the influence is spread over the images not shown.</p>",
    ]
    for name, image, top, remaining in queries:
        parts.append("<div class='q'>")
        parts.append(
            f"<figure><img src='{_data_uri(image, scale)}' width='{max_px // 2}' alt='query'>"
            f"<figcaption>{html.escape(name)}</figcaption></figure><div class='t'>"
        )
        for item in top:
            px = max(12, round(max_px * math.sqrt(max(float(item["share"]), 0.0))))
            parts.append(
                f"<figure><img src='{_data_uri(train_images[int(item['index'])], scale)}' width='{px}' height='{px}' "
                f"alt='#{item['index']}'><figcaption>#{item['index']}<br>{100 * float(item['share']):.1f}%"
                "</figcaption></figure>"
            )
        parts.append(f"</div><p>remaining influence: {100 * remaining:.1f}%</p></div>")
    parts.append("</body></html>")
    return "".join(parts)


def _generated_queries(
    pipeline: Path,
    lora: Path | None,
    prompts: list[str],
    n: int,
    *,
    steps: int,
    guidance_scale: float,
    seed: int,
    out: Path,
) -> tuple[list[Path], list[str]]:
    """Draw ``n`` images per prompt from ``pipeline`` (+ ``lora``) into ``out/queries/`` (PNG); their paths and
    prompts."""
    pipe = open_pipeline(pipeline, lora)
    drawn = sample_pipeline(pipe, prompts, n, seed=seed, steps=steps, guidance_scale=guidance_scale)
    paths = save_images(drawn, out / "queries", prefix="query")
    return paths, [prompts[i // n] for i in range(len(paths))]


@app.command("query")
@handle_errors
def query_cmd(
    images: list[Path] = typer.Argument(
        None, help="Query image files (resized to the index's image size); or generate them with --pipeline."
    ),
    store: Path = typer.Option(..., "--store", help="Index folder written by 'genprov similarity index'."),
    out: Path = typer.Option(..., "--out", help="Folder for results.json, attribution.npz, gallery.html, report.html."),
    top_k: int = typer.Option(20, "--top-k", min=1, help="Training images listed per query."),
    convert: bool = typer.Option(
        False, "--convert", help="Convert images whose channel count differs from the index's (RGB <-> grey)."
    ),
    search: str = config_option(
        SimilarityConfig,
        "search",
        "--search",
        help="exact, or FAISS candidates re-ranked exactly: faiss (the index's saved FAISS index, HNSW when none), "
        "hnsw, or ivfpq (compressed; build it with 'similarity index --search ivfpq', else it is built in memory).",
    ),
    n_probe: int | None = config_option(SimilarityConfig, "n_probe", "--nprobe", min=1),
    rerank: int | None = config_option(
        SimilarityConfig,
        "n_candidates",
        "--rerank",
        min=1,
        help="FAISS candidates per query re-scored exactly from the stored features (more: higher recall, slower). "
        "Default: max(4 x top-k, 64); for ivfpq max(100 x top-k, 1000).",
    ),
    pipeline: Path | None = typer.Option(
        None,
        "--pipeline",
        help="Generate the queries instead of reading files: a text-to-image pipeline folder (with --prompt), e.g. "
        "the base of a customization; the images are saved under OUT/queries.",
    ),
    lora: Path | None = typer.Option(
        None, "--lora", help="With --pipeline: a LoRA folder loaded into it (e.g. a customization with its token)."
    ),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="With --pipeline: a prompt to draw from (repeatable), e.g. 'a handwritten <v1> seven'."
    ),
    n: int = typer.Option(4, "--n", min=1, help="With --pipeline: images drawn per prompt."),
    denoise_steps: int = typer.Option(
        QUERY_SAMPLE_STEPS, "--steps", min=1, help="With --pipeline: denoising steps of every image."
    ),
    guidance: float = typer.Option(
        7.5, "--guidance-scale", help="With --pipeline: classifier-free guidance weight (1 = none; 7.5 as diffusers)."
    ),
    seed: int = SEED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Attribute generated images to an index's training images: top-k with soft shares of influence.

    Higher scores mean more similar, read as more influence; 'share' is the calibrated soft attribution (the
    shares of all training images sum to 1; 'remaining' is the share outside the top-k). With --pipeline (+
    --lora) and --prompt, the queries are drawn from the pipeline first (image i of a prompt from --seed and i)
    and each result row records its prompt.

    Example: genprov similarity query --store runs/sim samples/0001.png samples/0002.png --top-k 20 --out runs/why

    Example: genprov similarity query --store runs/sim --pipeline runs/base --lora runs/v1 --prompt "a handwritten
    <v1> seven" --n 8 --out runs/why-v1
    """
    images = list(images or [])
    if images and pipeline is not None:
        raise ConfigError("Give query image files or --pipeline (to generate them), not both.")
    if pipeline is None and (lora is not None or prompt):
        raise ConfigError("--lora and --prompt need --pipeline (the pipeline to generate the queries with).")
    if pipeline is not None and not prompt:
        raise ConfigError("--pipeline needs what to draw: give --prompt TEXT (repeatable), e.g. the customization's.")
    if pipeline is None and not images:
        raise DataError("No query images given; pass one or more image files, or --pipeline with --prompt.")
    check_output_folder(out)
    attributor, train, record = open_similarity_index(
        store, similarity_config={"search": search, "n_probe": n_probe, "n_candidates": rerank}
    )
    channels, image_size, _ = (int(v) for v in record.state["image_shape"])
    prompts: list[str | None] = [None] * len(images)
    if pipeline is not None:
        images, generated_prompts = _generated_queries(
            pipeline, lora, prompt, n, steps=denoise_steps, guidance_scale=guidance, seed=seed, out=out
        )
        prompts = list(generated_prompts)
    x = _query_images(images, size=image_size, channels=channels, convert=convert or pipeline is not None)
    k = min(top_k, len(train))
    result = attributor.attribute(x, k=k)
    assert result.soft is not None
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "attribution.npz")
    rows: list[dict[str, Any]] = []
    for q, path in enumerate(images):
        top = [
            {"index": int(i), "score": float(s), "share": float(p)}
            for i, s, p in zip(result.indices[q], result.scores[q], result.soft[q], strict=True)
        ]
        row = {"query": str(path), "top": top, "remaining_influence": max(0.0, 1.0 - float(result.soft[q].sum()))}
        rows.append(row if prompts[q] is None else {**row, "prompt": prompts[q]})
    calibration = attributor.calibration_
    summary = {
        "command": "similarity query",
        "method": attributor.method,
        "store": str(store),
        "n_train": len(train),
        "image_size": image_size,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "calibrated": bool(record.state.get("calibration")),
        **(
            {"pipeline": str(pipeline), "lora": str(lora) if lora is not None else None} if pipeline is not None else {}
        ),
        "queries": rows,
    }
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(
        out / "gallery.html",
        sized_gallery_html(
            f"{attributor.method}: share of influence",
            [(r["query"], x[q], r["top"], r["remaining_influence"]) for q, r in enumerate(rows)],
            train.images,
        ),
    )
    report = Report(
        f"{attributor.method}: top training images",
        subtitle=f"index {store}",
        meta={"method": attributor.method, "training images": len(train), "queries": len(x)},
    )
    section = Section(
        "influencers",
        "Top training images per query",
        intro="Most similar training images with their soft share of influence (gallery.html draws them sized "
        "by share).",
    )
    if not record.state.get("calibration"):
        section.add(Text("Uncalibrated soft attribution (default inv_tau and bias): tune to calibrate.", tone="note"))
    for q, r in enumerate(rows):
        idx = torch.as_tensor([t["index"] for t in r["top"]])
        section.add(
            Gallery(
                [
                    GalleryRow.from_tensors(
                        "top-k (share of influence)",
                        train.images[idx],
                        scores=[t["share"] for t in r["top"]],
                        captions=[f"#{t['index']}" for t in r["top"]],
                        tone="positive",
                    )
                ],
                query=x[q],
                query_caption=f"query {q}",
                caption=f"{r['query']} (remaining influence {100 * r['remaining_influence']:.1f}%)",
            )
        )
    report.add(section).write(out, filename="report.html")
    if as_json:
        emit(summary, as_json=True)
    else:
        emit(
            [
                {
                    "query": r["query"],
                    "top": ", ".join(f"#{t['index']} ({100 * t['share']:.1f}%)" for t in r["top"][:5]),
                    "remaining": f"{100 * r['remaining_influence']:.1f}%",
                }
                for r in rows
            ],
            as_json=False,
            title=f"{attributor.method}: most influential training images",
        )
        console.print(f"[green]wrote[/] {out / 'results.json'}, {out / 'gallery.html'} and {out / 'report.html'}")
