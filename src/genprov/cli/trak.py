"""``genprov trak``: which training images shaped a diffusion model's output (TRAK / D-TRAK).

``featurize`` writes the training set's projected gradient features into a resumable store (re-run the
same command after a crash to finish it); ``score`` attributes query images against a store (JSON + an
HTML gallery); ``lds-benchmark`` builds an LDS benchmark (subset models trained and measured one task each, here
or on Ray, resumable per model); ``lds`` measures a store's attribution against such a benchmark (or the one
``genprov reproduce dtrak`` writes). Method settings come from ``genprov.attribution.data.TRAKConfig``:
the flags set the common ones, ``--set KEY=VALUE`` any other.

``featurize --backend processes|ray`` (or tar shards / parquet files as ``--data``) reads the training set as an
image collection (``genprov.data.collections``): each shard task reads its own images, so this process never holds
them; the store records the collection, and ``score`` reads only the training images its gallery shows.

The model is a DDPM checkpoint, or a text-to-image pipeline folder (with ``--lora DIR``, a LoRA on it) whose
training images each come with a caption (``--captions labels|FILE``): images are encoded once (VAE latents
and text embeddings, ``genprov.models.t2i.encode_examples``) and the queries come with their prompts
(``--prompt`` / ``--prompts``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from genprov.attribution.data.base import TopK
from genprov.attribution.data.trak import DAMPING_GRID, TRAKAttributor, TRAKConfig
from genprov.attribution.data.trak_shards import (
    ModelSource,
    featurize_collection,
    featurize_sharded,
    fit_collection_store,
    started_from_collection,
)
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
    merge_dicts,
    parse_sets,
    workers_option,
)
from genprov.data import ImageDataset, load_dataset, load_images
from genprov.data.collections import (
    CollectionSpec,
    ImageCollection,
    collection_spec,
    is_collection_only,
    resolve_collection,
)
from genprov.data.conditioned import ConditionedExamples
from genprov.data.images import IMAGE_EXTENSIONS
from genprov.eval.lds import LDSBenchmark, evaluate_lds, pixel_similarity
from genprov.eval.lds_benchmark import BENCHMARK_FILE, LDSBenchmarkConfig, LDSPlan, build_lds_benchmark
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.t2i import LORA_PARAMETER_GLOBS, captions_for, encode_examples, is_pipeline_folder, open_pipeline
from genprov.models.t2i.captions import read_captions_file
from genprov.models.train_config import TrainConfig
from genprov.models.training import default_train_config
from genprov.report import Figure, Gallery, Report, Section, Table
from genprov.report.blocks import INFLUENCE_LABELS, GalleryRow, Tone
from genprov.report.figures import metric_bars
from genprov.storage import FeatureStore
from genprov.storage.shards import make_backend
from genprov.utils.artifacts import INCOMPLETE_STORE, check_output_folder
from genprov.utils.io import atomic_write_json, read_json

app = typer.Typer(
    help="Data attribution for diffusion models with TRAK and D-TRAK: featurize a training set, then ask which "
    "training images shaped a generated image.\n\nExample: genprov trak featurize --model runs/ddpm --data digits "
    "--store runs/dtrak --output-function squared-l2-norm && genprov trak score --store runs/dtrak --queries "
    "samples/ --out runs/why",
    no_args_is_help=True,
    add_completion=False,
)

SETS_OPTION = typer.Option(
    [], "--set", help="Any TRAKConfig parameter, KEY=VALUE (JSON values), e.g. --set 'include=[\"unet.up_blocks.*\"]'."
)


def _ddpm(path: Path) -> DDPM:
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.model, DDPM):
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint; 'genprov trak' attributes DDPMs (train one with "
            "'genprov train ddpm')."
        )
    return ckpt.model


def _open_store(store: Path) -> tuple[FeatureStore, dict[str, Any]]:
    fs = FeatureStore.open(store)
    info = fs.info
    if "model" not in info or "data" not in info or "trak_config" not in info:
        raise DataError(
            f"{store} was not written by 'genprov trak featurize' (its manifest lacks the model, data or config); "
            "score it from Python with TRAKAttributor.fit_features."
        )
    return fs, info


def _is_pipeline(model: Path, lora: Path | None, captions: str | None) -> bool:
    """Whether ``--model`` is a text-to-image pipeline folder; refuses ``--lora`` / ``--captions`` that do not
    fit it (before anything is read or written)."""
    if is_pipeline_folder(model):
        if captions is None:
            raise ConfigError(
                f"{model} is a text-to-image pipeline: give each training image its caption with --captions labels "
                "(from the class names) or --captions FILE (JSON or CSV mapping each image to its caption)."
            )
        return True
    if lora is not None:
        raise ConfigError(
            f"--lora needs a text-to-image pipeline folder as --model; {model} is not one (no model_index.json)."
        )
    if captions is not None:
        raise ConfigError(
            f"--captions is for a text-to-image pipeline; {model} is not one (no model_index.json): drop --captions."
        )
    return False


def _data_spec(
    data: str, split: str | None, n: int | None, seed: int, data_root: Path | None, size: int
) -> dict[str, Any]:
    """The ``load_dataset`` arguments of the training set at the model's size (what a store records)."""
    return {
        "name": data,
        "split": split,
        "n": n,
        "seed": seed,
        "resize": size,
        "data_root": str(data_root) if data_root is not None else None,
    }


def _check_channels(data: str, found: int, channels: int) -> None:
    if found != channels:
        raise DataError(f"{data} has {found}-channel images but the model takes {channels}.")


def _training_set(
    data: str, split: str | None, n: int | None, seed: int, data_root: Path | None, size: int, channels: int
) -> tuple[dict[str, Any], ImageDataset]:
    """The training images at the model's size (and the ``load_dataset`` arguments a store records), checked
    against the model's channels."""
    data_spec = _data_spec(data, split, n, seed, data_root, size)
    train = load_dataset(**data_spec)
    _check_channels(data, train.n_channels, channels)
    return data_spec, train


def _training_collection(data_spec: dict[str, Any], channels: int) -> CollectionSpec:
    """The training set of ``_data_spec`` as a resolved image collection (one image read), checked against the
    model's channels."""
    spec = collection_spec(
        data_spec["name"],
        split=data_spec["split"] or "train",
        n=data_spec["n"],
        seed=data_spec["seed"],
        size=data_spec["resize"],
        data_root=data_spec["data_root"],
    )
    resolved = resolve_collection(spec)
    assert resolved.shape is not None
    _check_channels(data_spec["name"], resolved.shape[0], channels)
    return resolved


def _reads_collection(store: Path, data: str, backend: str) -> bool:
    """Whether ``featurize`` reads ``--data`` as a collection, shard by shard (``featurize_collection``): on
    another backend than this process or for tar shards / parquet files, or to resume a store started so; a store
    started from images in memory is resumed as it was started."""
    started = started_from_collection(store)
    if started is None:
        return backend != "inprocess" or is_collection_only(data)
    return started or is_collection_only(data)


def _encode_train(pipe: Any, train: ImageDataset, captions: str) -> ConditionedExamples:
    """The training images with their captions (``labels`` or a captions file), encoded once."""
    return encode_examples(pipe, train.images, captions_for(captions, train), option="--captions")


@dataclasses.dataclass(frozen=True)
class _Opened:
    """A store's attributor rebuilt, with its training images and, for a text-to-image store, the pipeline.

    Attributes:
        attributor: The fitted attributor.
        loaded: The training images, loaded (``None`` for a store of a collection: see :attr:`train`).
        info: The store's recorded facts.
        pipeline: The text-to-image pipeline (with its LoRA) that encodes queries; ``None`` for a DDPM.
        collection: The collection a store of ``featurize_collection`` was featurized from, else ``None``.
    """

    attributor: TRAKAttributor
    loaded: ImageDataset | None
    info: dict[str, Any]
    pipeline: Any
    collection: ImageCollection | None = None

    @property
    def train(self) -> ImageDataset:
        """All the training images: a collection's are read whole here (``lds`` needs them all; ``score`` reads
        only those it shows, with :meth:`training_images`)."""
        if self.loaded is not None:
            return self.loaded
        assert self.collection is not None
        return ImageDataset(self.collection.read(0, len(self.collection)), None, self.collection.spec.source)

    def training_images(self, indices: np.ndarray) -> torch.Tensor:
        """Training images ``indices`` (n, C, H, W), in order: a collection's read one by one."""
        if self.loaded is not None:
            return self.loaded.images[torch.as_tensor(indices, dtype=torch.long)]
        assert self.collection is not None and self.collection.spec.shape is not None
        if not len(indices):
            return torch.empty(0, *self.collection.spec.shape)
        return torch.cat([self.collection.read(int(i), int(i) + 1) for i in indices])


def _attributor(store: Path, sets: list[str]) -> _Opened:
    """Rebuild the attributor of a store (checking model, data and config against it); a store of a collection
    reads none of its images (``_Opened.train`` / ``training_images`` read them when asked)."""
    _, info = _open_store(store)
    config = TRAKConfig.from_dict({**info["trak_config"], **parse_sets(sets)})
    t2i = info.get("t2i")
    if t2i is None and started_from_collection(store):
        attributor = TRAKAttributor(_ddpm(Path(info["model"])), config=config)
        return _Opened(attributor, None, info, None, fit_collection_store(attributor, store))
    train = load_dataset(**info["data"])
    if t2i is None:
        attributor = TRAKAttributor(_ddpm(Path(info["model"])), config=config)
        attributor.fit(train, store=store, show_progress=False)
        return _Opened(attributor, train, info, None)
    pipe = open_pipeline(Path(info["model"]), t2i["lora"])
    attributor = TRAKAttributor.for_pipeline(pipe, config)
    attributor.fit(_encode_train(pipe, train, str(t2i["captions"])), store=store, show_progress=False)
    return _Opened(attributor, train, info, pipe)


def _influence_gallery(opened: _Opened, query: torch.Tensor, best: TopK, q: int, *, caption: str) -> Gallery:
    """Query ``q``'s gallery of its most positive and negative influencers, laid out as ``Gallery.top_k`` does,
    reading only the training images it shows."""
    groups: list[tuple[str, np.ndarray, np.ndarray, Tone]] = [
        (INFLUENCE_LABELS[0], best.indices[q], best.scores[q], "positive")
    ]
    if best.negative_indices is not None and best.negative_scores is not None:
        groups.append((INFLUENCE_LABELS[1], best.negative_indices[q], best.negative_scores[q], "negative"))
    rows = []
    for label, indices, scores, tone in groups:
        shown = np.asarray(indices).reshape(-1)
        images = opened.training_images(shown)
        captions = [f"#{int(i)}" for i in shown]
        rows.append(GalleryRow.from_tensors(label, images, scores=scores, captions=captions, tone=tone))
    return Gallery(rows, query=query, query_caption=f"query {q}", caption=caption)


@app.command("featurize")
@handle_errors
def featurize_cmd(
    model: Path = typer.Option(
        ...,
        "--model",
        help="DDPM checkpoint folder (genprov train ddpm), or a text-to-image pipeline folder (genprov train t2i; "
        "then --captions).",
    ),
    data: str = typer.Option(
        ...,
        "--data",
        help="Training images: dataset name (digits, mnist, ...) or path (image folder, .npz, LMDB folder, tar shards "
        "as 'a-{000..009}.tar' or a .txt list of them, parquet files with an image-bytes column).",
    ),
    store: Path = typer.Option(..., "--store", help="Feature store folder (created; an unfinished one is resumed)."),
    lora: Path | None = typer.Option(
        None,
        "--lora",
        help="Pipelines only: a LoRA folder (genprov train lora) loaded into the pipeline; the gradients are then "
        "taken of the LoRA parameters only (the D-TRAK ArtBench setting) unless --set include=[...] says otherwise.",
    ),
    captions: str | None = typer.Option(
        None,
        "--captions",
        help="Pipelines only (and required there): each training image's caption, 'labels' (from the class names) "
        "or a captions file (JSON list or {image: caption}, or CSV).",
    ),
    split: str = typer.Option("train", "--split", help="Dataset split to attribute to."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a seeded random subset of N training images."),
    output_function: str = config_option(
        TRAKConfig,
        "output_function",
        "--output-function",
        help="loss (TRAK), squared-l2-norm (D-TRAK), mean, l1-norm, l2-norm, ...",
    ),
    n_timesteps: int = config_option(
        TRAKConfig, "n_timesteps", "--n-timesteps", min=1, help="K, timesteps per example."
    ),
    schedule: str = config_option(
        TRAKConfig,
        "schedule",
        "--schedule",
        help="uniform (t = 0, T/K, ...) or cumulative (t = 0..K-1); a list: --set timesteps=[...]",
    ),
    projector: str = config_option(
        TRAKConfig,
        "projector",
        "--projector",
        help="sjlt (fast on CPU), gaussian, rademacher, identity, kronecker (one batched pass; Linear / Conv2d layers only).",
    ),
    proj_dim: int = config_option(TRAKConfig, "proj_dim", "--proj-dim", min=1, help="Feature dimension k."),
    backend: str = backend_option(
        "the shards are computed",
        "tasks that reopen --model; with processes or ray each shard task reads its own images of --data",
        "The features",
    ),
    address: str | None = ADDRESS_OPTION,
    workers: int = workers_option("shards computed"),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Compute the training set's TRAK / D-TRAK features into a resumable store.

    Example: genprov trak featurize --model runs/ddpm --data digits --store runs/dtrak --output-function squared-l2-norm

    Text-to-image: genprov trak featurize --model runs/t2i --lora runs/lora --data cifar2 --captions labels
    --store runs/dtrak-lora --output-function squared-l2-norm

    On Ray: add --backend ray --workers 8 (a local Ray), or --address auto on a cluster's node; each task reads
    its own images of --data (e.g. tar shards 'laion/part-{0000..0099}.tar'), which the workers must reach at the
    same path.
    """
    check_output_folder(store, accept={"feature store", INCOMPLETE_STORE}, option="--store")
    runner = make_backend(backend, address=address, workers=workers)
    pipe: Any = None
    if _is_pipeline(model, lora, captions):
        if is_collection_only(data):
            raise ConfigError(
                f"--data {data} names tar shards or parquet files, which are read only shard by shard, but a "
                "text-to-image pipeline's training images are encoded with their --captions in this process first: "
                "give them as an image folder, an .npz or a data set name (the gradients are still computed shard by "
                "shard on --backend), or featurize a DDPM from the collection."
            )
        pipe = open_pipeline(model, lora)
        size, channels = int(pipe.vae.config.sample_size), int(pipe.vae.config.in_channels)
    else:
        ddpm = _ddpm(model)
        size, channels = ddpm.config.image_size, ddpm.config.channels
    data_spec = _data_spec(data, split, n, seed, data_root, size)
    base = {
        "output_function": output_function,
        "n_timesteps": n_timesteps,
        "schedule": schedule,
        "projector": projector,
        "proj_dim": proj_dim,
        "seed": seed,
        **({"include": LORA_PARAMETER_GLOBS} if lora is not None else {}),
    }
    config = TRAKConfig.from_dict({**base, **parse_sets(sets)})
    facts: dict[str, Any] = {}
    if pipe is None and _reads_collection(store, data, backend):
        collection = _training_collection(data_spec, channels)
        attributor = featurize_collection(TRAKAttributor(ddpm, config=config), collection, store, runner)
    elif pipe is None:
        _, train = _training_set(data, split, n, seed, data_root, size, channels)
        attributor = featurize_sharded(TRAKAttributor(ddpm, config=config), train, store, runner)
    else:
        _, train = _training_set(data, split, n, seed, data_root, size, channels)
        examples = _encode_train(pipe, train, str(captions))
        attributor = TRAKAttributor.for_pipeline(pipe, config)
        featurize_sharded(attributor, examples, store, runner, source=ModelSource.pipeline(model, lora))
        source = captions if captions == "labels" else str(Path(str(captions)).resolve())
        facts["t2i"] = {"lora": None if lora is None else str(lora.resolve()), "captions": source}
    assert attributor.store_ is not None
    attributor.store_.update_info(
        model=str(model.resolve()),
        data=data_spec,
        trak_config=config.to_dict(),
        image_size=size,
        channels=channels,
        **facts,
    )
    summary = {
        "store": str(store),
        "method": attributor.method,
        "n_train": attributor.n_train_,
        "feature_dim": attributor.feature_dim,
        "timesteps": list(attributor.timesteps),
        "parameters": len(attributor.parameter_names),
        "shards": attributor.store_.n_shards,
    }
    emit(summary, as_json=as_json, title="features")


def _query_images(
    specs: list[str], *, size: int, channels: int, split: str, n: int | None, seed: int, data_root: Path | None
) -> tuple[torch.Tensor, list[str]]:
    images, names = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(load_images([path], size=size, channels=channels))
            names.append(str(path))
            continue
        # a path without split sub-folders is one set of images (load_dataset calls it the train split)
        part = split if not path.exists() or (path / split).is_dir() else "train"
        ds = load_dataset(spec, split=part, data_root=data_root, resize=size, n=None if path.exists() else n, seed=seed)
        if ds.n_channels != channels:
            raise DataError(f"{spec} has {ds.n_channels}-channel images but the model takes {channels}.")
        images.append(ds.images)
        names.extend(f"{spec}[{i}]" for i in range(len(ds)))
    if not images:
        raise DataError("No queries given; pass --queries with image files, a folder, an .npz or a dataset name.")
    return torch.cat(images), names


def _check_prompt_options(store: Path, info: dict[str, Any], prompt: str | None, prompts: Path | None) -> None:
    """Refuse ``--prompt`` / ``--prompts`` for a DDPM store, and neither or both for a text-to-image store."""
    if "t2i" not in info:
        if prompt is not None or prompts is not None:
            raise ConfigError(
                f"--prompt / --prompts are for a text-to-image store; {store} attributes a DDPM: drop them."
            )
        return
    if (prompt is None) == (prompts is None):
        raise ConfigError(
            f"{store} attributes a text-to-image pipeline: give the queries' prompts with --prompt TEXT (one for "
            "every query) or --prompts FILE (one per query: a JSON list or {image: prompt}, or CSV), "
            + ("not both." if prompt is not None else "one of them.")
        )


def _query_prompts(prompt: str | None, prompts: Path | None, queries: list[str], x: torch.Tensor) -> list[str]:
    """One prompt per query: ``--prompt`` for all, or read from ``--prompts`` (a JSON list in the queries' order,
    or keyed by file name when ``--queries`` is one folder; see ``genprov.models.t2i.captions``)."""
    if prompt is not None:
        return [prompt] * len(x)
    assert prompts is not None
    folder = queries[0] if len(queries) == 1 and Path(queries[0]).is_dir() else "--queries"
    return list(read_captions_file(prompts, ImageDataset(x, None, folder)))


@app.command("score")
@handle_errors
def score_cmd(
    store: Path = typer.Option(..., "--store", help="Feature store written by 'genprov trak featurize'."),
    queries: list[str] = typer.Option(
        ..., "--queries", help="Query images: image files, a folder, an .npz or a dataset name; repeatable."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for attribution.npz/.json, results.json and report.html."),
    top_k: int = typer.Option(10, "--top-k", min=1, help="Training images listed per query."),
    negatives: int = typer.Option(3, "--negatives", min=0, help="Most negative influencers shown in the gallery."),
    query_split: str = typer.Option(
        "test", "--query-split", help="Split when --queries names a dataset (or a folder with splits)."
    ),
    n_queries: int | None = typer.Option(
        None,
        "--n-queries",
        min=1,
        help="Seeded random subset of a named query dataset (folders and files are used whole).",
    ),
    save_scores: bool = typer.Option(
        False,
        "--save-scores",
        help="Also write the full (n_queries, n_train) float32 scores to scores.npy in --out (written block by block "
        "to disk; without it only each query's top-k and negatives are kept, so memory does not grow with the store).",
    ),
    prompt: str | None = typer.Option(
        None,
        "--prompt",
        help="Text-to-image stores: the prompt of every query (e.g. the one they were generated with).",
    ),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help="Text-to-image stores: one prompt per query, a JSON list in the queries' order or {image: prompt} "
        "(file names of a --queries folder), or CSV with image and caption columns.",
    ),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Attribute query images to the training images of a store: top-k JSON and an HTML gallery.

    Higher scores mean more positive influence (training on the image helped the model on the query).
    Scoring settings (scoring, damping, relative_damping) may change with --set; the features may not.

    Example: genprov trak score --store runs/dtrak --queries samples/ --top-k 10 --out runs/why

    Text-to-image: genprov trak score --store runs/dtrak-lora --queries runs/t2i-horses/samples.npz
    --prompt "a photo of a horse" --out runs/why-horses
    """
    check_output_folder(out)
    _check_prompt_options(store, _open_store(store)[1], prompt, prompts)
    opened = _attributor(store, sets)  # a collection's images: only those the gallery shows are read
    attributor, info = opened.attributor, opened.info
    n_train = int(attributor.n_train_ or 0)
    x, names = _query_images(
        queries,
        size=int(info["image_size"]),
        channels=int(info["channels"]),
        split=query_split,
        n=n_queries,
        seed=seed,
        data_root=data_root,
    )
    texts: list[str] | None = None
    if opened.pipeline is None:
        phi_q = attributor.featurize_queries(x)
    else:
        texts = _query_prompts(prompt, prompts, queries, x)
        encoded = encode_examples(opened.pipeline, x, texts, option="--prompt" if prompt else "--prompts")
        phi_q = attributor.featurize_queries(encoded)
    # block-wise over the store: the float32 scores 'scores' returns, ranked exactly (gradients computed once)
    best = attributor.top_k_scores(
        phi_q,
        min(top_k, n_train),
        negative=min(negatives, n_train),
        dtype="float32",
        out=out / "scores.npy" if save_scores else None,
    )
    result = attributor.result_from_top_k(best)
    result.save(out / "attribution.npz")
    rows: list[dict[str, Any]] = []
    report = Report(
        f"{attributor.method}: top influencers",
        subtitle=f"store {store}",
        meta={"method": attributor.method, "training images": n_train, "queries": len(x)},
    )
    section = Section(
        "influencers",
        "Top influencers per query",
        intro="Most positive training images (training on them helped the model on the query) and most negative.",
    )
    for q, name in enumerate(names):
        top = [{"index": int(i), "score": float(s)} for i, s in zip(result.indices[q], result.scores[q], strict=True)]
        rows.append({"query": name, **({"prompt": texts[q]} if texts is not None else {}), "top": top})
        section.add(_influence_gallery(opened, x[q], best, q, caption=name if texts is None else f"{name}: {texts[q]}"))
    report.add(section)
    report.write(out, filename="report.html")
    summary = {
        "command": "trak score",
        "method": attributor.method,
        "store": str(store),
        "n_train": n_train,
        "queries": rows,
    }
    atomic_write_json(out / "results.json", summary)
    if as_json:
        emit(summary, as_json=True)
    else:
        emit(
            [
                {"query": r["query"], "top": ", ".join(f"#{t['index']} ({t['score']:.3g})" for t in r["top"][:5])}
                for r in rows
            ],
            as_json=False,
            title=f"{attributor.method}: most positive influencers",
        )
        console.print(f"[green]wrote[/] {out / 'results.json'}, {out / 'attribution.npz'} and {out / 'report.html'}")


@app.command("lds")
@handle_errors
def lds_cmd(
    store: Path = typer.Option(..., "--store", help="Feature store written by 'genprov trak featurize'."),
    benchmark: Path = typer.Option(
        ...,
        "--benchmark",
        help="LDS benchmark .npz (masks, losses, queries), e.g. lds_benchmark.npz of genprov reproduce dtrak.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for results.json and report.html."),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples of the confidence intervals."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Linear datamodeling score of a store's attribution, lambda chosen on the benchmark's validation queries.

    Reports the LDS with 95% bootstrap intervals, the lambda sweep, the raw-pixel baseline and the noise
    ceiling (when the benchmark has two or more training seeds per subset).

    Example: genprov trak lds --store runs/dtrak --benchmark runs/repro/lds_benchmark.npz --out runs/lds
    """
    check_output_folder(out)
    if "t2i" in _open_store(store)[1]:
        raise ConfigError(
            f"{store} attributes a text-to-image pipeline; 'genprov trak lds' takes DDPM stores (its benchmark's "
            "queries carry no prompts). Measure the LoRA setting with 'genprov reproduce dtrak'."
        )
    opened = _attributor(store, sets)
    attributor, train = opened.attributor, opened.train
    bench = LDSBenchmark.load(benchmark).with_validation_split(seed)
    if bench.masks.shape[1] != len(train):
        raise DataError(
            f"{benchmark} has subsets of {bench.masks.shape[1]} training images but the store holds {len(train)}; "
            "featurize the benchmark's training set."
        )
    queries = torch.from_numpy(np.ascontiguousarray(bench.queries)).to(torch.float32)
    phi_q = attributor.featurize_queries(queries)
    label = {"trak": "TRAK", "d-trak": "D-TRAK"}.get(attributor.method, attributor.method)
    dampings = [attributor.absolute_damping(r) for r in DAMPING_GRID]
    method_scores = {
        label: attributor.scores_sweep(phi_q, dampings),
        "pixel similarity": pixel_similarity(queries, train.images)[None],
    }
    lds = evaluate_lds(method_scores, bench, dampings=DAMPING_GRID, seed=seed, n_boot=n_boot)
    results = {
        "command": "trak lds",
        "method": attributor.method,
        "store": str(store),
        "benchmark": str(benchmark),
        "lds": lds,
    }
    atomic_write_json(out / "results.json", results)
    rows = [
        {
            "query kind": kind,
            "method": method,
            "LDS": r["lds"]["mean"],
            "95% CI": f"[{r['lds']['low']:.3f}, {r['lds']['high']:.3f}]",
            "lambda / (tr/k)": r["relative_damping"],
        }
        for kind, methods in lds["methods"].items()
        for method, r in methods.items()
    ]
    report = Report(f"LDS of {attributor.method}", subtitle=f"benchmark {benchmark}")
    section = Section("lds", "Linear datamodeling score", intro="lambda chosen on validation queries; LDS on the rest.")
    section.add(Table(rows, caption="LDS per query kind."))
    for kind, methods in lds["methods"].items():
        bars = {m: r["lds"]["mean"] for m, r in methods.items()}
        section.add(Figure(metric_bars(bars, ylabel="LDS", title=f"{kind} queries"), caption=f"{kind} queries"))
    report.add(section).write(out, filename="report.html")
    if as_json:
        emit(results, as_json=True)
    else:
        emit(rows, as_json=False, title="LDS (test queries)")


#: The output folder kind 'genprov trak lds-benchmark' resumes (its results.json).
_LDS_BENCHMARK_OUTPUT = "output of 'genprov trak lds-benchmark'"


def _ddpm_recipe(model: Path) -> tuple[DDPMConfig, TrainConfig]:
    """The architecture and training recipe of ``--model``: a DDPM checkpoint folder (its recorded configs; the
    recommended recipe if it records none) or a JSON file ``{"model": {...}, "training": {...}}`` (training
    optional) or of DDPMConfig fields."""
    if model.is_dir():
        ckpt = load_checkpoint(model)
        if not isinstance(ckpt.model_config, DDPMConfig):
            raise CheckpointError(
                f"{model} holds a {ckpt.kind!r} checkpoint; 'genprov trak lds-benchmark' trains DDPMs (give a DDPM "
                "checkpoint or a JSON file of its config)."
            )
        return ckpt.model_config, ckpt.training_config or default_train_config(ckpt.model_config)
    if model.suffix.lower() != ".json" or not model.is_file():
        raise ConfigError(
            f"--model {model}: expected a DDPM checkpoint folder (genprov train ddpm) or a .json file with its "
            'config ({"model": {...DDPMConfig...}, "training": {...TrainConfig...}}); no such folder or file.'
        )
    try:
        data = read_json(model)
    except ValueError as err:
        raise ConfigError(f"--model {model} is not valid JSON ({err}); fix the file.") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--model {model} must hold a JSON object; got {type(data).__name__}.")
    model_cfg = DDPMConfig.from_dict(data.get("model", data))
    training = data.get("training") if "model" in data else None
    return model_cfg, TrainConfig.from_dict(training) if training is not None else default_train_config(model_cfg)


@app.command("lds-benchmark")
@handle_errors
def lds_benchmark_cmd(
    data: str = typer.Option(..., "--data", help="Training images: dataset name (digits, mnist, ...) or path."),
    model: Path = typer.Option(
        ...,
        "--model",
        help="The subset models' architecture and training recipe: a DDPM checkpoint folder (its recorded model "
        "and training configs; its weights are not used: every subset model trains from scratch) or a JSON file "
        '{"model": {...DDPMConfig...}, "training": {...TrainConfig...}} (training optional).',
    ),
    queries: list[str] = typer.Option(
        ...,
        "--queries",
        help="Real query images (held-out images): image files, a folder, an .npz or a dataset name; repeatable.",
    ),
    generated: list[str] = typer.Option(
        [],
        "--generated",
        help="Generated query images (e.g. genprov sample's samples.npz), kind 'generated'; repeatable.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help=f"Folder for {BENCHMARK_FILE}, results.json and the resumable losses store losses/ (run the same "
        "command again to resume).",
    ),
    split: str = typer.Option("train", "--split", help="Dataset split of the training images."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a seeded random subset of N training images."),
    query_split: str = typer.Option(
        "test", "--query-split", help="Split when --queries names a dataset (or a folder with splits)."
    ),
    n_queries: int | None = typer.Option(
        None, "--n-queries", min=1, help="Seeded random subset of a named query dataset (folders and files whole)."
    ),
    n_subsets: int = config_option(LDSBenchmarkConfig, "n_subsets", "--subsets", min=3),
    n_seeds: int = config_option(LDSBenchmarkConfig, "n_seeds", "--seeds", min=1),
    subset_fraction: float = config_option(LDSBenchmarkConfig, "subset_fraction", "--subset-fraction"),
    train_epochs: int = config_option(LDSBenchmarkConfig, "train_epochs", "--epochs", min=1),
    eval_draws: int = config_option(LDSBenchmarkConfig, "eval_draws", "--draws", min=1),
    keep_models: bool = typer.Option(
        False,
        "--keep-models",
        help="Also keep each model trained by this run as a checkpoint folder in --out/models/ (written by the "
        "driver from what its task returns, so Ray workers need no shared file system).",
    ),
    backend: str = backend_option("the models train", "one task per model", "The benchmark and its models"),
    address: str | None = ADDRESS_OPTION,
    workers: int = workers_option("models trained (one CPU each)"),
    sets: list[str] = typer.Option(
        [],
        "--set",
        help="Any LDSBenchmarkConfig parameter, KEY=VALUE (JSON values), e.g. --set train_steps=600; the training "
        "recipe under training., e.g. --set training.lr=1e-4 --set training.batch_size=32.",
    ),
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Build an LDS benchmark: DDPMs trained on random subsets of the training set, their losses on the queries.

    Trains --seeds models on each of --subsets random subsets (each --subset-fraction of the training images;
    model j of every subset trains with the same derived seed) with the recipe of --model for --epochs epochs,
    and measures each model's diffusion loss on every query, averaged over --draws fixed (timestep, noise) pairs.
    Each model is one task (here, or a Ray task with --backend ray); each finished model's losses are written
    to --out/losses at once, so a killed run resumes with the missing models only, and a second run on the same
    --out is refused while one is going. Writes --out/lds_benchmark.npz, which 'genprov trak lds' reads.

    Example: genprov trak lds-benchmark --data digits --model runs/ddpm --queries digits --n-queries 64
    --generated runs/samples/samples.npz --subsets 64 --seeds 3 --epochs 200 --draws 1000 --out runs/lds-bench

    On a Ray cluster: add --backend ray --address auto --workers 64 on the head node.
    """
    check_output_folder(out, accept={_LDS_BENCHMARK_OUTPUT})
    runner = make_backend(backend, address=address, workers=workers)
    model_cfg, recipe = _ddpm_recipe(model)
    size, channels = model_cfg.image_size, model_cfg.channels
    data_spec, train = _training_set(data, split, n, seed, data_root, size, channels)
    load = {
        "size": size,
        "channels": channels,
        "split": query_split,
        "n": n_queries,
        "seed": seed,
        "data_root": data_root,
    }
    real, names = _query_images(queries, **load)  # type: ignore[arg-type]
    parts, kinds = [real], ["real"] * len(real)
    if generated:
        fake, fake_names = _query_images(generated, **load)  # type: ignore[arg-type]
        parts.append(fake)
        names, kinds = names + fake_names, kinds + ["generated"] * len(fake)
    base = {
        "n_subsets": n_subsets,
        "n_seeds": n_seeds,
        "subset_fraction": subset_fraction,
        "train_epochs": train_epochs,
        "eval_draws": eval_draws,
        "seed": seed,
        "training": recipe.to_dict(),
    }
    config = LDSBenchmarkConfig.from_dict(merge_dicts(base, parse_sets(sets)))
    plan = LDSPlan.make(config, model_cfg, train.images, torch.cat(parts), kinds=kinds)
    bench = build_lds_benchmark(plan, out / "losses", runner, models=out / "models" if keep_models else None)
    bench.save(out / BENCHMARK_FILE)
    summary = {
        "benchmark": str(out / BENCHMARK_FILE),
        "n_train": len(train),
        "queries": {kind: int((bench.kinds == kind).sum()) for kind in sorted(set(kinds))},
        "subsets": plan.n_subsets,
        "seeds": plan.n_seeds,
        "models": plan.n_models,
        "kept models": str(out / "models") if keep_models else None,
        "backend": runner.name,
    }
    atomic_write_json(
        out / "results.json",
        {
            "command": "trak lds-benchmark",
            **summary,
            "model": str(model.resolve()),
            "ddpm": model_cfg.to_dict(),
            "data": data_spec,
            "config": plan.config.to_dict(),
            "losses_store": str(out / "losses"),
            "query_names": names,
            "query_kinds": kinds,
        },
    )
    emit(summary, as_json=as_json, title="LDS benchmark")
