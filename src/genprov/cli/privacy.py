"""``genprov explain`` and ``genprov privacy``: what a classifier's explanations show, and what they leak.

* :func:`explain` (``genprov explain``) writes heat-map overlays of a classifier's explanations (gradient,
  Grad-CAM, LRP) as PNGs plus an HTML page and the raw maps.
* :data:`app` (``genprov privacy``) holds ``audit`` (train the model-inversion attacks ExpMI and PredMI
  on the explanations, with and without a defense, and report how well they rebuild held-out inputs) and
  ``defend`` (train a GNIME defense, or a Gaussian-noise one, and save it).

Explainer settings come from the explainer's config (``--set KEY=VALUE``); the attacks' and GNIME's from
``AttackConfig`` / ``GNIMEConfig`` (``--set attack.width=16``, ``--set gnime.n_epochs=10``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import typer
from matplotlib import colormaps
from PIL import Image as PILImage
from torch import Tensor, nn

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
from genprov.data import expand_image_paths, load_dataset, load_images
from genprov.eval.privacy_audit import attack_metrics, audit_configs, evaluate_defense, fit_clean_attacks, fit_gnime
from genprov.eval.stats import MeanCI
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.artifact import read_artifact
from genprov.models.checkpoints import load_checkpoint
from genprov.privacy import (
    EXPLAINERS,
    Defense,
    Explainer,
    GaussianNoiseConfig,
    GaussianNoiseDefense,
    GNIMEConfig,
    matched_gaussian_noise,
    measure_distortion,
    privacy_splits,
)
from genprov.report import Image, KeyValue, Report, Section, Table, Text
from genprov.utils.artifacts import check_output_folder
from genprov.utils.io import atomic_save_npz, atomic_write_bytes, atomic_write_json
from genprov.utils.seeding import derive_seed

__all__ = ["app", "audit", "defend", "explain"]

app = typer.Typer(
    help="Explanation privacy: audit what a classifier's explanations leak to a model-inversion attacker, and "
    "train a defense (GNIME).\n\nExample: genprov privacy audit --model runs/classifier --data digits --out runs/audit",
    no_args_is_help=True,
    add_completion=False,
)

_GENERATOR_KINDS = ("gan", "ddpm", "tabular-gan")
METHOD_HELP = "Explainer: gradient, grad-cam, lrp (z+ with the flat input rule) or lrp-epsilon."
SETS_HELP = "Explainer / attack / GNIME parameters, KEY=VALUE (JSON), e.g. --set layer=conv.4 --set attack.width=16."


# ---------------------------------------------------------------------------------------------- helpers


def _classifier(path: Path) -> tuple[nn.Module, int | None, int | None]:
    """The classifier of a checkpoint folder, with the image size and channels it takes (when recorded)."""
    if not path.exists():
        raise CheckpointError(
            f"No checkpoint at {path}: the folder does not exist. Train one with 'genprov train classifier'."
        )
    ckpt = load_checkpoint(path)
    if ckpt.kind in _GENERATOR_KINDS:
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint (a generator); explanations need an image classifier "
            "(train one with 'genprov train classifier')."
        )
    cfg = ckpt.model_config
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "channels", None)
    return ckpt.model.eval(), (int(size) if size is not None else None), (int(channels) if channels else None)


def _split_sets(sets: list[str]) -> dict[str, dict[str, Any]]:
    """``--set`` values grouped: ``{"explainer": {...}, "attack": {...}, "gnime": {...}}``."""
    values = parse_sets(sets)
    out: dict[str, dict[str, Any]] = {"explainer": {}, "attack": {}, "gnime": {}}
    for key, value in values.items():
        if key in ("attack", "gnime"):
            if not isinstance(value, dict):
                raise ConfigError(f"--set {key}=... needs a field, e.g. --set {key}.width=16; got {key}={value!r}.")
            out[key].update(value)
        else:
            out["explainer"][key] = value
    return out


def _explainer(method: str, model: nn.Module, values: dict[str, Any]) -> Explainer:
    config_type = EXPLAINERS.config_type(method)
    config = config_type.from_dict(values) if config_type is not None else None
    return EXPLAINERS.create(method, model, config=config)


def _check_size(x: Tensor, size: int | None, channels: int | None, where: str) -> None:
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise DataError(
            f"{where} are {x.shape[2]}x{x.shape[3]} pixels but the model takes {size}x{size}; the explanation "
            f"maps would have shape (n, 1, {x.shape[2]}, {x.shape[3]}) instead of (n, 1, {size}, {size}). Pass "
            "--resize to resize them to the model's size."
        )
    if channels is not None and x.shape[1] != channels:
        raise DataError(f"{where} have {x.shape[1]} channels but the model takes {channels}.")


def _heat_png(map_: Tensor, scale: int, cmap: str = "inferno") -> bytes:
    """A [0, 1] map (1, H, W) as a coloured PNG, upscaled ``scale`` times (nearest)."""
    rgb = colormaps[cmap](map_[0].clamp(0, 1).numpy())[..., :3]
    return _png((rgb * 255).round().astype(np.uint8), scale)


def _overlay_png(image: Tensor, map_: Tensor, scale: int, alpha: float = 0.55) -> bytes:
    """The image in grey with the coloured map blended over it (``alpha`` = weight of the map)."""
    grey = ((image.mean(dim=0) + 1) / 2).clamp(0, 1).numpy()[..., None].repeat(3, axis=2)
    heat = colormaps["inferno"](map_[0].clamp(0, 1).numpy())[..., :3]
    blend = (1 - alpha) * grey + alpha * heat
    return _png((blend * 255).round().astype(np.uint8), scale)


def _png(pixels: np.ndarray, scale: int) -> bytes:
    pil = PILImage.fromarray(pixels)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), PILImage.Resampling.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- explain


@handle_errors
def explain(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images to explain."),
    model: Path = typer.Option(..., "--model", help="Classifier checkpoint folder (genprov train classifier)."),
    method: str = typer.Option("gradient", "--method", help=METHOD_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs, index.html, explanations.npz and results.json."),
    target: int | None = typer.Option(
        None, "--target", min=0, help="Class to explain (default: each image's prediction)."
    ),
    resize: bool = typer.Option(False, "--resize", help="Resize the images to the model's input size."),
    sets: list[str] = typer.Option(
        [], "--set", help="Explainer parameters, KEY=VALUE (JSON), e.g. --set layer=conv.2."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Explain a classifier's predictions: heat-map overlays (PNG), an HTML page and the raw maps.

    Writes OUT/overlays/<name>.png (the map blended over the image), OUT/maps/<name>.png (the map alone,
    in [0, 1]), OUT/explanations.npz (maps, prediction vectors), OUT/results.json and OUT/index.html.

    Example: genprov explain --model runs/classifier --method lrp digits/*.png --out runs/explain
    """
    check_output_folder(out)
    net, size, channels = _classifier(model)
    files = expand_image_paths(images)
    x = load_images(files, size=size if resize else None, channels=channels)
    _check_size(x, size, channels, "The images")
    explainer = _explainer(method, net, parse_sets(sets))
    tgt = None if target is None else torch.full((len(x),), int(target), dtype=torch.int64)
    maps = explainer.explain(x, tgt)
    probs = explainer.predict(x)
    if maps.shape[0] != len(x) or tuple(maps.shape[2:]) != tuple(x.shape[2:]):
        raise DataError(
            f"The {method} explainer returned maps of shape {tuple(maps.shape)} for images {tuple(x.shape)}."
        )
    scale = max(1, 128 // int(x.shape[-1]))
    rows, blocks = [], []
    stems: dict[str, int] = {}
    for i, path in enumerate(files):
        stem = path.stem
        stems[stem] = stems.get(stem, 0) + 1
        name = stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"
        overlay, heat = _overlay_png(x[i], maps[i], scale), _heat_png(maps[i], scale)
        atomic_write_bytes(out / "overlays" / f"{name}.png", overlay)
        atomic_write_bytes(out / "maps" / f"{name}.png", heat)
        pred = int(probs[i].argmax())
        explained = pred if tgt is None else int(tgt[i])
        rows.append(
            {
                "path": str(path),
                "predicted": pred,
                "probability": round(float(probs[i, pred]), 4),
                "explained class": explained,
                "overlay": f"overlays/{name}.png",
                "map": f"maps/{name}.png",
            }
        )
        blocks.append(Image(overlay, caption=f"{path.name}: predicted {pred} ({float(probs[i, pred]):.2f})"))
    atomic_save_npz(out / "explanations.npz", {"maps": maps.numpy(), "predictions": probs.numpy()})
    report = Report(
        f"{method} explanations",
        subtitle=f"model {model}",
        meta={"method": method, "images": len(files), "target": "predicted class" if target is None else target},
    )
    section = Section(
        "explanations",
        "Heat maps over the images",
        intro="Each map is post-processed as in GNIME (channel sum, absolute value, min-max to [0, 1] per image) "
        "and drawn with the inferno colour map over the grey image (bright = high attribution).",
    )
    section.add(Table(rows, caption="Prediction and explained class per image.", columns=list(rows[0])[:4]), *blocks)
    report.add(section)
    page = report.write(out)
    summary = {"command": "explain", "method": method, "model": str(model), "images": rows, "report": str(page)}
    atomic_write_json(out / "results.json", summary)
    if as_json:
        emit(summary, as_json=True)
    else:
        emit([{k: r[k] for k in ("path", "predicted", "probability", "overlay")} for r in rows], as_json=False)
        console.print(f"[green]wrote[/] {page}")


# ------------------------------------------------------------------------------------------------- audit


def _recorded_explainer(defense: Path) -> tuple[str, dict[str, Any]]:
    recorded = read_artifact(defense, Defense.artifact_kind, legacy=Defense.legacy_formats)[0].state.get("explainer")
    if not isinstance(recorded, dict) or "name" not in recorded:
        raise CheckpointError(f"{defense / 'config.json'} does not record the explainer the defense wraps; re-save it.")
    return str(recorded["name"]), dict(recorded.get("config") or {})


def _mean(v: Any) -> Any:
    return v.mean if isinstance(v, MeanCI) else v


@app.command("audit")
@handle_errors
def audit(
    model: Path = typer.Option(..., "--model", help="Classifier checkpoint folder: the model whose explanations leak."),
    data: str = typer.Option(..., "--data", help="Images of the model's domain: dataset name (digits, ...) or path."),
    out: Path = typer.Option(..., "--out", help="Folder for results.json, report.html and the fitted attacks."),
    explainer_name: str | None = typer.Option(
        None, "--explainer", help=METHOD_HELP + " Default: the one the --defense wraps, else gradient."
    ),
    defense_dir: Path | None = typer.Option(
        None, "--defense", help="A saved defense (genprov privacy defend); default: fit GNIME with --a here."
    ),
    a: float = config_option(
        GNIMEConfig, "a", "--a", help="GNIME's privacy weight when it is fitted here (paper: 100; faces 500)."
    ),
    split: str = typer.Option("test", "--split", help="Dataset split to use."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a seeded random subset of N images."),
    evaluator_path: Path | None = typer.Option(
        None, "--evaluator", help="An independent classifier for TCA (default: the model itself: re-classification)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Small decoders and few epochs (a smoke test)."),
    sets: list[str] = typer.Option([], "--set", help=SETS_HELP),
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure how well model-inversion attacks rebuild held-out inputs from explanations, with and without a defense.

    The images are split into the defender's part (fits GNIME), the attacker's part (80/20 training / early
    stopping of the decoders ExpMI and PredMI) and a held-out test part that gives every number. The defense
    (GNIME, and Gaussian noise of the same distortion) is measured against a non-adaptive attacker (trained on
    clean explanations) and an adaptive one (retrained on defended explanations). Lower attacker MSE = more
    leakage; PredMI is what the predictions alone leak.

    Example: genprov privacy audit --model runs/classifier --data digits --explainer lrp --out runs/audit
    """
    check_output_folder(out)
    net, size, channels = _classifier(model)
    groups = _split_sets(sets)
    if explainer_name is None:
        if defense_dir is not None:
            explainer_name, recorded = _recorded_explainer(defense_dir)
            groups["explainer"] = {**recorded, **groups["explainer"]}
        else:
            explainer_name = "gradient"
    explainer = _explainer(explainer_name, net, groups["explainer"])
    ds = load_dataset(data, split=split, data_root=data_root, resize=size, n=n, seed=seed)
    if ds.labels is None:
        raise DataError(f"{data!r} has no labels; the audit needs the true classes for the accuracies.")
    _check_size(ds.images, size, channels, f"The {data} images")
    evaluator = net if evaluator_path is None else _classifier(evaluator_path)[0]
    splits = privacy_splits(len(ds), seed=derive_seed(seed, "audit-splits"), labels=ds.labels)
    parts = {k: (ds.images[v], ds.labels[v]) for k, v in splits.as_dict().items()}
    attack_cfg, gnime_cfg = audit_configs(
        quick=quick, attack={"seed": seed, **groups["attack"]}, gnime={"a": a, "seed": seed, **groups["gnime"]}
    )
    obs = {k: explainer.observe(parts[k][0]) for k in ("attacker_train", "attacker_val", "test")}
    out.mkdir(parents=True, exist_ok=True)
    expmi, predmi = fit_clean_attacks(obs, parts, attack_cfg)
    expmi.save_pretrained(out / "attacks" / "exp-mi")
    predmi.save_pretrained(out / "attacks" / "pred-mi")
    if defense_dir is not None:
        defense = Defense.from_pretrained(defense_dir, explainer)
    else:
        defense = fit_gnime(explainer, gnime_cfg, parts["defender"][0])
    rnd = matched_gaussian_noise(defense, parts["defender"][0], seed=seed)
    test_x, test_y = parts["test"]
    common: dict[str, Any] = {"victim": net, "evaluator": evaluator, "seed": seed, "n_boot": 1000}
    base = {
        "ExpMI (no defense)": attack_metrics(expmi.reconstruct(obs["test"]), test_x, test_y, **common),
        "PredMI": attack_metrics(predmi.reconstruct(obs["test"]), test_x, test_y, **common),
    }
    evaluated = {
        name: evaluate_defense(d, obs, parts, expmi, attack_cfg, **common)
        for name, d in ((defense.name, defense), ("gaussian-noise (matched)", rnd))
    }
    rows: list[dict[str, Any]] = []
    for threat in ("non-adaptive", "adaptive"):
        rows.append(
            {
                "threat model": threat,
                "attack": "ExpMI (no defense)",
                "distortion": 0.0,
                **_cells(base["ExpMI (no defense)"]),
            }
        )
        for name, ev in evaluated.items():
            rows.append(
                {
                    "threat model": threat,
                    "attack": f"ExpMI vs {name}",
                    "distortion": ev["distortion"],
                    **_cells(ev[threat]),
                }
            )
        rows.append({"threat model": threat, "attack": "PredMI", "distortion": None, **_cells(base["PredMI"])})
    report = Report(
        "Explanation privacy audit",
        subtitle=f"model {model}, {explainer_name} explanations, data {data}",
        meta={"explainer": explainer_name, "defense": defense.name, "seed": seed, "test images": len(test_x)},
    )
    section = Section(
        "audit",
        "Attack success with and without the defense",
        intro="MSE / SSIM on images in [0, 1] (lower MSE = more leakage); accuracy: share of reconstructions the "
        + ("evaluation classifier" if evaluator_path is not None else "model itself")
        + " assigns the original's class. 95% bootstrap intervals over the held-out test images.",
    )
    if quick:
        section.add(
            Text("Quick mode: small decoders and few epochs; the attack is weaker than a real one.", tone="note")
        )
    section.add(
        KeyValue(
            {"defense distortion": evaluated[defense.name]["distortion"], "splits": str(splits.sizes())},
            float_format=".4f",
        ),
        Table(rows, caption="Attacks on the held-out test images.", float_format={"mse": ".4f", "distortion": ".4f"}),
    )
    report.add(section)
    page = report.write(out, filename="report.html")
    summary = {
        "command": "privacy audit",
        "model": str(model),
        "explainer": explainer_name,
        "defense": defense.describe(),
        "splits": splits.sizes(),
        "rows": [{k: (v.to_dict() if isinstance(v, MeanCI) else v) for k, v in r.items()} for r in rows],
        "report": str(page),
    }
    atomic_write_json(out / "results.json", summary)
    if as_json:
        emit(summary, as_json=True)
    else:
        emit([{k: _mean(v) for k, v in r.items()} for r in rows], as_json=False, title="explanation privacy audit")
        console.print(f"[green]wrote[/] {page}")


def _cells(metrics: dict[str, Any]) -> dict[str, Any]:
    s = metrics["summary"]
    return {"mse": s["mse"], "ssim": _mean(s["ssim"]), "psnr": _mean(s["psnr"]), "accuracy": _mean(s.get("tca"))}


# ------------------------------------------------------------------------------------------------ defend


@app.command("defend")
@handle_errors
def defend(
    model: Path = typer.Option(..., "--model", help="Classifier checkpoint folder whose explanations to defend."),
    data: str = typer.Option(..., "--data", help="The defender's images: dataset name (digits, ...) or path."),
    out: Path = typer.Option(..., "--out", help="Folder to save the defense in (config.json [+ model.safetensors])."),
    explainer_name: str = typer.Option("gradient", "--explainer", help=METHOD_HELP),
    method: str = typer.Option("gnime", "--method", help="gnime (learned noise) or gaussian-noise (RND)."),
    a: float = config_option(
        GNIMEConfig, "a", "--a", help="GNIME's privacy weight (paper: 100 for digits, 500 for faces)."
    ),
    sigma: float | None = config_option(
        GaussianNoiseConfig,
        "sigma",
        "--sigma",
        default=None,
        help="gaussian-noise: standard deviation of the noise (or --match).",
    ),
    match: Path | None = typer.Option(
        None, "--match", help="gaussian-noise: match the distortion of this saved defense (measured on --data)."
    ),
    split: str = typer.Option("train", "--split", help="Dataset split to use."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a seeded random subset of N images."),
    sets: list[str] = typer.Option([], "--set", help=SETS_HELP),
    seed: int = SEED_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a defense of a classifier's explanations and save it (reload with Defense.load or --defense).

    gnime trains a noise generator against a surrogate inverter on the images (Jeong et al., NeurIPS 2022);
    gaussian-noise adds noise of --sigma, or of the distortion of a saved defense (--match). Prints the
    distortion (MSE between defended and clean maps) measured on the images.

    Example: genprov privacy defend --model runs/classifier --data digits --explainer lrp --a 100 --out runs/gnime
    """
    check_output_folder(out)
    net, size, channels = _classifier(model)
    groups = _split_sets(sets)
    explainer = _explainer(explainer_name, net, groups["explainer"])
    ds = load_dataset(data, split=split, data_root=data_root, resize=size, n=n, seed=seed)
    _check_size(ds.images, size, channels, f"The {data} images")
    defense: Defense
    if method == "gnime":
        if sigma is not None or match is not None:
            raise ConfigError("--sigma and --match belong to --method gaussian-noise; drop them for gnime.")
        cfg = audit_configs(gnime={"a": a, "seed": seed, **groups["gnime"]})[1]
        defense = fit_gnime(explainer, cfg, ds.images)
    elif method == "gaussian-noise":
        if (sigma is None) == (match is None):
            raise ConfigError("--method gaussian-noise needs exactly one of --sigma S or --match SAVED_DEFENSE.")
        if match is not None:
            defense = matched_gaussian_noise(Defense.from_pretrained(match, explainer), ds.images, seed=seed)
        else:
            defense = GaussianNoiseDefense(explainer, GaussianNoiseConfig(sigma=cast(float, sigma), seed=seed))
    else:
        raise ConfigError(f"--method must be 'gnime' or 'gaussian-noise'; got {method!r}.")
    defense.save_pretrained(out)
    summary = {
        "defense": defense.name,
        "folder": str(out),
        "explainer": explainer_name,
        "distortion": measure_distortion(defense, ds.images),
        "images": len(ds),
        "config": defense.config.to_dict(),
    }
    emit(summary, as_json=as_json, title="saved defense")
