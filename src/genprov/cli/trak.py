"""``genprov trak``: which training images shaped a diffusion model's output (TRAK / D-TRAK).

``featurize`` writes the training set's projected gradient features into a resumable store (re-run the
same command after a crash to finish it); ``score`` attributes query images against a store (JSON + an
HTML gallery); ``lds`` measures a store's attribution against an LDS benchmark (such as the one
``genprov reproduce dtrak`` writes). Method settings come from ``genprov.attribution.data.TRAKConfig``:
the flags set the common ones, ``--set KEY=VALUE`` any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from genprov.attribution.data.trak import DAMPING_GRID, TRAKAttributor, TRAKConfig
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
from genprov.data import load_dataset, load_images
from genprov.data.images import IMAGE_EXTENSIONS
from genprov.eval.lds import LDSBenchmark, evaluate_lds, pixel_similarity
from genprov.exceptions import CheckpointError, DataError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM
from genprov.report import Figure, Gallery, Report, Section, Table
from genprov.report.figures import metric_bars
from genprov.storage import FeatureStore
from genprov.utils.artifacts import INCOMPLETE_STORE, check_output_folder
from genprov.utils.io import atomic_open, atomic_write_json

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


def _attributor(store: Path, sets: list[str]) -> tuple[TRAKAttributor, Any, dict[str, Any]]:
    """Rebuild the attributor of a store (checking model, data and config against it)."""
    _, info = _open_store(store)
    model = _ddpm(Path(info["model"]))
    train = load_dataset(**info["data"])
    config = TRAKConfig.from_dict({**info["trak_config"], **parse_sets(sets)})
    attributor = TRAKAttributor(model, config=config).fit(train, store=store, show_progress=False)
    return attributor, train, info


@app.command("featurize")
@handle_errors
def featurize_cmd(
    model: Path = typer.Option(..., "--model", help="DDPM checkpoint folder (genprov train ddpm)."),
    data: str = typer.Option(..., "--data", help="Training images: dataset name (digits, mnist, ...) or path."),
    store: Path = typer.Option(..., "--store", help="Feature store folder (created; an unfinished one is resumed)."),
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
        TRAKConfig, "projector", "--projector", help="sjlt (fast on CPU), gaussian, rademacher, identity."
    ),
    proj_dim: int = config_option(TRAKConfig, "proj_dim", "--proj-dim", min=1, help="Feature dimension k."),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Compute the training set's TRAK / D-TRAK features into a resumable store.

    Example: genprov trak featurize --model runs/ddpm --data digits --store runs/dtrak --output-function squared-l2-norm
    """
    check_output_folder(store, accept={"feature store", INCOMPLETE_STORE}, option="--store")
    ddpm = _ddpm(model)
    size, channels = ddpm.config.image_size, ddpm.config.channels
    data_spec = {
        "name": data,
        "split": split,
        "n": n,
        "seed": seed,
        "resize": size,
        "data_root": str(data_root) if data_root is not None else None,
    }
    train = load_dataset(**data_spec)  # type: ignore[arg-type]
    if train.n_channels != channels:
        raise DataError(f"{data} has {train.n_channels}-channel images but the model takes {channels}.")
    base = {
        "output_function": output_function,
        "n_timesteps": n_timesteps,
        "schedule": schedule,
        "projector": projector,
        "proj_dim": proj_dim,
        "seed": seed,
    }
    config = TRAKConfig.from_dict({**base, **parse_sets(sets)})
    attributor = TRAKAttributor(ddpm, config=config)
    attributor.fit(train, store=store)
    assert attributor.store_ is not None
    attributor.store_.update_info(
        model=str(model.resolve()), data=data_spec, trak_config=config.to_dict(), image_size=size, channels=channels
    )
    summary = {
        "store": str(store),
        "method": attributor.method,
        "n_train": len(train),
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
    save_scores: bool = typer.Option(False, "--save-scores", help="Also write the full (n_queries, n_train) scores."),
    sets: list[str] = SETS_OPTION,
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Attribute query images to the training images of a store: top-k JSON and an HTML gallery.

    Higher scores mean more positive influence (training on the image helped the model on the query).
    Scoring settings (scoring, damping, relative_damping) may change with --set; the features may not.

    Example: genprov trak score --store runs/dtrak --queries samples/ --top-k 10 --out runs/why
    """
    check_output_folder(out)
    attributor, train, info = _attributor(store, sets)
    x, names = _query_images(
        queries,
        size=int(info["image_size"]),
        channels=int(info["channels"]),
        split=query_split,
        n=n_queries,
        seed=seed,
        data_root=data_root,
    )
    scores = attributor.scores(x)
    result = attributor.result_from_scores(scores, k=min(top_k, len(train)))  # gradients computed once
    result.save(out / "attribution.npz")
    if save_scores:
        with atomic_open(out / "scores.npy") as handle:
            np.save(handle, scores.numpy())
    rows: list[dict[str, Any]] = []
    report = Report(
        f"{attributor.method}: top influencers",
        subtitle=f"store {store}",
        meta={"method": attributor.method, "training images": len(train), "queries": len(x)},
    )
    section = Section(
        "influencers",
        "Top influencers per query",
        intro="Most positive training images (training on them helped the model on the query) and most negative.",
    )
    for q, name in enumerate(names):
        top = [{"index": int(i), "score": float(s)} for i, s in zip(result.indices[q], result.scores[q], strict=True)]
        rows.append({"query": name, "top": top})
        section.add(
            Gallery.influence(
                x[q],
                train.images,
                scores[q],
                k_positive=min(top_k, len(train)),
                k_negative=negatives,
                caption=name,
                query_caption=f"query {q}",
            )
        )
    report.add(section)
    report.write(out, filename="report.html")
    summary = {
        "command": "trak score",
        "method": attributor.method,
        "store": str(store),
        "n_train": len(train),
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
    attributor, train, _ = _attributor(store, sets)
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
