"""The runner of ``genprov reproduce gnime`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the classifiers, attacks and defenses, measures them and returns a :class:`GNIMEResult`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from genprov.data import has_split, load_dataset
from genprov.eval.privacy_audit import attack_metrics, evaluate_defense, fit_clean_attacks, fit_gnime
from genprov.eval.reconstruction import classification_hits
from genprov.eval.stats import MeanCI, holm_adjust, paired_difference_ci, paired_sign_flip_p_value
from genprov.exceptions import DataError
from genprov.experiments.base import EXPERIMENTS, start_run
from genprov.experiments.gnime.config import GNIMEExperimentConfig, classifier_config
from genprov.experiments.gnime.report import build_report, image_grid
from genprov.experiments.gnime.results import (
    AblationRow,
    AttackRow,
    Comparison,
    DefenseOutcome,
    Finding,
    FindingRow,
    GNIMEResult,
    Metrics,
    RndLevel,
    SweepPoint,
)
from genprov.models.classifiers import CNNClassifier
from genprov.models.training import default_train_config, train_classifier
from genprov.privacy import (
    EXPLAINERS,
    GNIME_VARIANTS,
    AttackConfig,
    Explainer,
    GNIMEConfig,
    matched_gaussian_noise,
    privacy_splits,
)
from genprov.privacy.defenses import GaussianNoiseDefense, GNIMEDefense
from genprov.utils.seeding import derive_seed

__all__ = ["cache_key", "run_gnime"]

logger = logging.getLogger(__name__)

_THREATS = ("non-adaptive", "adaptive")
#: Family-wise error level of the Holm-corrected comparisons.
ALPHA = 0.05
#: Sign flips of each paired permutation test.
N_PERM = 10_000


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short hash of ``parts``: the cache folder name of a model trained with these settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _load(config: GNIMEExperimentConfig) -> tuple[Tensor, Tensor]:
    """Pooled images and labels of the experiment (identities for Olivetti)."""
    size = config.size
    if config.data == "mnist":
        ds = load_dataset(
            "mnist", split="train", data_root=config.data_root, resize=size, n=config.n_data, seed=config.seed
        )
        if ds.labels is None:
            raise DataError("MNIST came without labels; check the data files.")
        return ds.images, ds.labels
    splits = ("train", "test") if has_split(config.data, "test") else ("train",)
    parts = [load_dataset(config.data, split=s, data_root=config.data_root, resize=size) for s in splits]
    x = torch.cat([p.images for p in parts])
    labels = [p.labels for p in parts]
    if any(lab is None for lab in labels):
        raise DataError(f"{config.data} came without labels; the experiment needs classes (identities).")
    y = torch.cat([cast(Tensor, lab) for lab in labels])
    if config.n_data is not None and config.n_data < len(x):
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(derive_seed(config.seed, "gnime-subset"))
        )
        keep = order[: config.n_data].sort().values
        x, y = x[keep], y[keep]
    return x, y


def _fractions(config: GNIMEExperimentConfig) -> dict[str, float]:
    if config.data == "olivetti":  # 5 / 3 / 1 / 1 images of every identity
        return {"defender": 0.5, "attacker_train": 0.3, "attacker_val": 0.1, "test": 0.1}
    return {"defender": 0.5, "attacker_train": 0.32, "attacker_val": 0.08, "test": 0.1}


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(classification_hits(model, x, y).mean())


@EXPERIMENTS.register("gnime", config=GNIMEExperimentConfig)
def run_gnime(
    config: GNIMEExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> GNIMEResult:
    """Run the explanation-privacy experiment; write ``results.json`` and ``report.html`` into ``out_dir``.

    Returns:
        The typed result (its ``to_dict()`` is ``results.json``).
    """
    config, out = start_run(config, out_dir, data_root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = config.seed
    x_all, y_all = _load(config)
    n_classes = int(y_all.max()) + 1
    splits = privacy_splits(len(x_all), seed=derive_seed(seed, "gnime-splits"), labels=y_all, **_fractions(config))
    data = {name: (x_all[idx], y_all[idx]) for name, idx in splits.as_dict().items()}

    t = time.perf_counter()
    models = out / "models"
    arch: dict[str, Any] = {"n_conv": config.classifier_n_conv, "n_pool": config.classifier_n_pool}
    victim_cfg = classifier_config(config.size, int(x_all.shape[1]), n_classes, config.classifier_width, **arch)
    evaluator_cfg = classifier_config(
        config.size, int(x_all.shape[1]), n_classes, max(1, round(config.classifier_width * 1.5)), **arch
    )
    trained = {}
    for name, model_cfg in (("victim", victim_cfg), ("evaluator", evaluator_cfg)):
        fitted = train_classifier(
            model_cfg,
            default_train_config(model_cfg, n_steps=config.classifier_steps, seed=derive_seed(seed, name)),
            data["defender"],
            models / name,
            show_progress=show_progress,
        )
        trained[name] = cast(CNNClassifier, fitted.model).eval()
    victim, evaluator = trained["victim"], trained["evaluator"]
    timings["classifiers"] = time.perf_counter() - t
    accuracy = {name: _accuracy(m, *data["test"]) for name, m in trained.items()}

    explainer = EXPLAINERS.create(config.explainer, victim)
    observations = {k: explainer.observe(data[k][0]) for k in ("attacker_train", "attacker_val", "test")}
    attack_cfg = config.attack.replace(seed=derive_seed(seed, "gnime-attack") % 2**31)
    key_base = {
        "data": config.data,
        "size": config.size,
        "n_data": config.n_data,
        "seed": seed,
        "explainer": config.explainer,
        "classifier": [config.classifier_steps, victim_cfg.to_dict()],
        "attack": attack_cfg.to_dict(),
    }
    cache = out / "cache"

    t = time.perf_counter()
    clean_expmi, predmi = fit_clean_attacks(
        observations,
        data,
        attack_cfg,
        cache=(cache / f"exp-mi-{cache_key(key_base)}", cache / f"pred-mi-{cache_key(key_base)}"),
        show_progress=show_progress,
    )
    timings["clean attacks"] = time.perf_counter() - t
    test_x, test_y = data["test"]
    common: dict[str, Any] = {"victim": victim, "evaluator": evaluator, "seed": seed, "n_boot": config.n_boot}
    recs: dict[str, Tensor] = {
        "exp-mi": clean_expmi.reconstruct(observations["test"]),
        "pred-mi": predmi.reconstruct(observations["test"]),
    }
    baseline = {name: attack_metrics(rec, test_x, test_y, **common) for name, rec in recs.items()}

    sweep: list[SweepPoint] = []
    main_live: dict[str, Any] = {}
    fits: dict[str, GNIMEDefense] = {}

    def measure(gnime_cfg: GNIMEConfig, a: float) -> tuple[SweepPoint, GNIMEDefense, dict[str, Any]]:
        """GNIME with ``gnime_cfg`` at weight ``a`` and its matched RND, each under both attackers."""
        gnime, rnd, live = _defend_and_attack(
            config,
            gnime_cfg,
            a,
            explainer,
            data,
            observations,
            clean_expmi,
            attack_cfg,
            common,
            key_base,
            cache,
            show_progress,
        )
        point = SweepPoint(
            a=a,
            matched_distortion_defender=cast(float, rnd.matched_distortion),
            rnd_sigma=rnd.config.sigma,
            gnime=_outcome(live["gnime"]),
            rnd=_outcome(live["rnd"]),
            comparison=_compare(live, baseline["pred-mi"], seed=seed, n_boot=config.n_boot),
            gnime_history=gnime.history_,
            gnime_map_std=gnime.map_std_,
        )
        return point, gnime, live

    for a in config.sweep:
        t = time.perf_counter()
        point, gnime, live = measure(config.gnime, a)
        sweep.append(point)
        if a == config.main_a:
            main_live = live
            fits[config.defense_variant] = gnime
        timings[f"sweep a={a:g}"] = time.perf_counter() - t
    sweep = _with_holm(sweep)
    ablation: list[AblationRow] = []
    if config.ablation:
        t = time.perf_counter()
        main_point = next(p for p in sweep if p.a == config.main_a)
        ablation.append(_ablation_row(config.defense_variant, config.gnime, fits[config.defense_variant], main_point))
        for variant in GNIME_VARIANTS:
            if variant == config.defense_variant:
                continue
            point, gnime, _ = measure(config.variant_gnime(variant), config.main_a)
            ablation.append(_ablation_row(variant, config.variant_gnime(variant), gnime, point))
        ablation = _ablation_with_holm(ablation)
        timings["ablation"] = time.perf_counter() - t
    extra_rnd: list[RndLevel] = []
    for sigma in config.rnd_sigmas:
        t = time.perf_counter()
        rnd = GaussianNoiseDefense.for_distortion(
            explainer,
            float(sigma) ** 2,
            explanations=explainer.explain(data["defender"][0]) if config.rnd_clamp else None,
            clamp=config.rnd_clamp,
            seed=derive_seed(seed, "gnime-rnd-extra", f"{sigma:g}") % 2**31,
        )
        rnd_result = evaluate_defense(
            rnd,
            observations,
            data,
            clean_expmi,
            attack_cfg,
            top_q=config.top_q,
            cache=cache / f"adaptive-rnd-sigma{sigma:g}-{cache_key({**key_base, 'defense': rnd.describe()})}",
            show_progress=show_progress,
            **common,
        )
        extra_rnd.append(RndLevel(sigma=float(sigma), rnd=_outcome(rnd_result)))
        timings[f"rnd sigma={sigma:g}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    baseline_metrics = {name: _metrics(m) for name, m in baseline.items()}
    main_point = next(p for p in sweep if p.a == config.main_a)
    result = GNIMEResult(
        experiment="gnime",
        paper="Jeong et al., Learning to Generate Inversion-Resistant Model Explanations, NeurIPS 2022",
        config=config.to_dict(),
        splits=splits.sizes(),
        image_size=config.size,
        n_classes=n_classes,
        classifier_test_accuracy=accuracy,
        main_a=config.main_a,
        baseline=baseline_metrics,
        table={threat: _table_rows(baseline_metrics, main_point, threat) for threat in _THREATS},
        sweep=tuple(sweep),
        rnd_extra=tuple(extra_rnd),
        finding=_finding(sweep, baseline_metrics),
        multiplicity={
            "test": f"two-sided paired sign-flip permutation test of the mean MSE difference ({N_PERM} flips)",
            "correction": "Holm-Bonferroni",
            "family": f"every sweep point x threat model of this run ({2 * len(sweep)} comparisons); the "
            "ablation is a family of its own",
            "level": ALPHA,
            "across runs": "explainers and datasets are separate runs: combine their mse_p_value fields with "
            "genprov.eval.stats.holm_adjust before claiming a win across them",
        },
        ablation=tuple(ablation),
        attacks={"exp-mi": clean_expmi.describe(), "pred-mi": predmi.describe()},
        timings_seconds={k: round(v, 1) for k, v in timings.items()},
        report="",
    )
    report = build_report(config, result, grid=image_grid(config, data, observations, recs, main_live))
    result = dataclasses.replace(result, report=str(report.write(out, filename="report.html")))
    result.write_json(out / "results.json")
    return result


def _defend_and_attack(
    config: GNIMEExperimentConfig,
    gnime_config: GNIMEConfig,
    a: float,
    explainer: Explainer,
    data: Mapping[str, tuple[Tensor, Tensor]],
    observations: Mapping[str, Any],
    clean_expmi: Any,
    attack_cfg: AttackConfig,
    common: Mapping[str, Any],
    key_base: Mapping[str, Any],
    cache: Path,
    show_progress: bool | None,
) -> tuple[GNIMEDefense, GaussianNoiseDefense, dict[str, Any]]:
    """Fit GNIME at ``a`` (cached), its matched RND, and evaluate both against both threat models."""
    seed = config.seed
    gnime_cfg = gnime_config.replace(a=a, seed=derive_seed(seed, "gnime-defense") % 2**31)
    gnime = fit_gnime(
        explainer,
        gnime_cfg,
        data["defender"][0],
        cache=cache / f"gnime-a{a:g}-{cache_key({**key_base, 'gnime': gnime_cfg.to_dict()})}",
        show_progress=show_progress,
    )
    rnd = matched_gaussian_noise(
        gnime, data["defender"][0], clamp=config.rnd_clamp, seed=derive_seed(seed, "gnime-rnd", f"{a:g}") % 2**31
    )
    live: dict[str, Any] = {}
    for name, defense in (("gnime", gnime), ("rnd", rnd)):
        live[name] = evaluate_defense(
            defense,
            observations,
            data,
            clean_expmi,
            attack_cfg,
            top_q=config.top_q,
            cache=cache / f"adaptive-{name}-a{a:g}-{cache_key({**key_base, 'defense': defense.describe()})}",
            show_progress=show_progress,
            **common,
        )
    return gnime, rnd, live


def _ablation_row(variant: str, gnime_config: GNIMEConfig, gnime: GNIMEDefense, point: SweepPoint) -> AblationRow:
    settings: dict[str, Any] = {k: getattr(gnime_config, k) for k in GNIME_VARIANTS[variant]}
    settings["steps"] = int(gnime.history_[-1]["step"]) if gnime.history_ else 0
    last = gnime.history_[-1] if gnime.history_ else {}
    return AblationRow(
        variant=variant,
        settings=settings,
        distortion=point.gnime.distortion,
        gnime_map_std=gnime.map_std_,
        final_losses={k: v for k, v in last.items() if k not in ("epoch", "step")},
        gnime=point.gnime,
        rnd=point.rnd,
        comparison=point.comparison,
    )


def _holm_comparisons(comparisons: Sequence[Mapping[str, Comparison]]) -> list[dict[str, Comparison]]:
    """``comparisons`` with ``mse_p_holm`` adjusted over all of them (every entry x threat model)."""
    keys = [(i, threat) for i, c in enumerate(comparisons) for threat in _THREATS]
    if not keys:
        return []
    adjusted = holm_adjust([comparisons[i][threat].mse_p_value for i, threat in keys])
    out: list[dict[str, Comparison]] = [dict(c) for c in comparisons]
    for (i, threat), p in zip(keys, adjusted, strict=True):
        out[i][threat] = dataclasses.replace(out[i][threat], mse_p_holm=float(p))
    return out


def _with_holm(sweep: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The sweep with Holm-adjusted p-values over every sweep point x threat model."""
    adjusted = _holm_comparisons([p.comparison for p in sweep])
    return [dataclasses.replace(p, comparison=c) for p, c in zip(sweep, adjusted, strict=True)]


def _ablation_with_holm(rows: Sequence[AblationRow]) -> list[AblationRow]:
    """The ablation rows with Holm-adjusted p-values over their own family (variant x threat model)."""
    adjusted = _holm_comparisons([r.comparison for r in rows])
    return [dataclasses.replace(r, comparison=c) for r, c in zip(rows, adjusted, strict=True)]


# ------------------------------------------------------------------------------------------ comparisons


def _compare(point: Mapping[str, Any], predmi: Mapping[str, Any], *, seed: int, n_boot: int) -> dict[str, Comparison]:
    """Paired comparisons of GNIME and its matched RND at one sweep point (positive = GNIME more private);
    ``mse_p_holm`` is the unadjusted p-value until :func:`_with_holm` adjusts the family."""
    out: dict[str, Comparison] = {}
    for threat in _THREATS:
        g, r = point["gnime"][threat]["per_image"], point["rnd"][threat]["per_image"]
        floor = predmi["per_image"]["mse"]
        out[threat] = Comparison(
            mse_gain=paired_difference_ci(g["mse"], r["mse"], seed=seed, n_boot=n_boot),
            ssim_gain=paired_difference_ci(r["ssim"], g["ssim"], seed=seed, n_boot=n_boot),
            tca_gain=paired_difference_ci(r["tca"], g["tca"], seed=seed, n_boot=n_boot),
            gnime_at_floor=bool(paired_difference_ci(floor, g["mse"], seed=seed, n_boot=n_boot).low <= 0),
            rnd_at_floor=bool(paired_difference_ci(floor, r["mse"], seed=seed, n_boot=n_boot).low <= 0),
            mse_p_value=(p := paired_sign_flip_p_value(g["mse"], r["mse"], seed=seed, n_perm=N_PERM)),
            mse_p_holm=p,
        )
    return out


def _a_list(rows: Sequence[FindingRow]) -> str:
    return ", ".join(f"{r.a:g}" for r in rows)


def _mse(metrics: Metrics) -> float:
    return cast(MeanCI, metrics["mse"]).mean


def _finding(sweep: Sequence[SweepPoint], baseline: Mapping[str, Metrics]) -> Finding:
    """Where GNIME beats noise at equal distortion, per threat model, in words and numbers."""
    per_threat: dict[str, tuple[FindingRow, ...]] = {}
    texts = []
    exp = _mse(baseline["exp-mi"])
    pred = _mse(baseline["pred-mi"])
    if exp < pred:
        texts.append(f"Explanations leak more than predictions: ExpMI MSE {exp:.4f} < PredMI {pred:.4f}.")
    else:
        texts.append(f"Here explanations did not leak more than predictions: ExpMI MSE {exp:.4f} >= PredMI {pred:.4f}.")
    for threat in ("adaptive", "non-adaptive"):
        rows = []
        for p in sweep:
            c = p.comparison[threat]
            rows.append(
                FindingRow(
                    a=p.a,
                    distortion=p.gnime.distortion.mean,
                    gnime_mse=_mse(p.gnime.against(threat)),
                    rnd_mse=_mse(p.rnd.against(threat)),
                    mse_gain=c.mse_gain,
                    tca_gain=c.tca_gain,
                    p_holm=c.mse_p_holm,
                    gnime_wins_mse=c.mse_gain.mean > 0 and c.mse_p_holm < ALPHA,
                    rnd_wins_mse=c.mse_gain.mean < 0 and c.mse_p_holm < ALPHA,
                    gnime_wins_tca=c.tca_gain.low > 0,
                    gnime_at_floor=c.gnime_at_floor,
                    rnd_at_floor=c.rnd_at_floor,
                )
            )
        wins = [r for r in rows if r.gnime_wins_mse]
        losses = [r for r in rows if r.rnd_wins_mse]
        sentence = f"{threat.capitalize()} attacker: "
        if wins:
            w = wins[0]
            sentence += (
                f"GNIME's error is above RND's at the same distortion (Holm-adjusted paired p < {ALPHA:g}) at a = "
                f"{_a_list(wins)}; the smallest such distortion is {w.distortion:.4g} "
                f"(a = {w.a:g}: MSE {w.gnime_mse:.4f} vs {w.rnd_mse:.4f}, Holm p = {w.p_holm:.3g})."
            )
        else:
            sentence += (
                "at no swept distortion is GNIME's error above RND's after the Holm correction "
                f"(family-wise level {ALPHA:g})."
            )
            nominal = [r for r in rows if r.mse_gain.low > 0]
            if nominal:
                sentence += f" (Before the correction its 95% paired interval is above 0 at a = {_a_list(nominal)}.)"
        if losses:
            sentence += f" RND's error is above GNIME's at a = {_a_list(losses)}."
        for name, floor in (
            ("RND", [r for r in rows if r.rnd_at_floor]),
            ("GNIME", [r for r in rows if r.gnime_at_floor]),
        ):
            if floor:
                sentence += (
                    f" {name} reaches the PredMI floor (attacker MSE not below PredMI's) from distortion "
                    f"{floor[0].distortion:.4g} (a = {floor[0].a:g})."
                )
            elif exp < pred:
                sentence += f" {name} stays below the PredMI floor at every swept distortion."
        tca_wins = [r for r in rows if r.gnime_wins_tca]
        if tca_wins:
            sentence += f" GNIME cuts TCA more than RND at a = {_a_list(tca_wins)}."
        texts.append(sentence)
        per_threat[threat] = tuple(rows)
    return Finding(adaptive=per_threat["adaptive"], non_adaptive=per_threat["non-adaptive"], text=" ".join(texts))


# ------------------------------------------------------------------------------------------- typed rows


def _table_rows(baseline: Mapping[str, Metrics], main: SweepPoint, threat: str) -> tuple[AttackRow, ...]:
    """The paper's table for one threat model: ExpMI no defense, RND, GNIME, PredMI."""

    def row(name: str, metrics: Metrics, defense: DefenseOutcome | None) -> AttackRow:
        clean = name.startswith("ExpMI")
        return AttackRow(
            attack=name,
            mse=cast(MeanCI | None, metrics.get("mse")),
            ssim=cast(MeanCI | None, metrics.get("ssim")),
            psnr=cast(MeanCI | None, metrics.get("psnr")),
            tca=cast(MeanCI | None, metrics.get("tca")),
            reclassification_accuracy=cast(MeanCI | None, metrics.get("reclassification_accuracy")),
            feature_similarity=cast(MeanCI | None, metrics.get("feature_similarity")),
            distortion=defense.distortion if defense is not None else (0.0 if clean else None),
            top_overlap=defense.top_overlap if defense is not None else (1.0 if clean else None),
        )

    return (
        row("ExpMI (no defense)", baseline["exp-mi"], None),
        row("RND", main.rnd.against(threat), main.rnd),
        row("GNIME", main.gnime.against(threat), main.gnime),
        row("PredMI", baseline["pred-mi"], None),
    )


def _metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """An attack's summary (MeanCI per metric; arrays as lists rounded to 6 decimals)."""
    return {k: [round(float(x), 6) for x in v] if isinstance(v, np.ndarray) else v for k, v in m["summary"].items()}


def _outcome(d: Mapping[str, Any]) -> DefenseOutcome:
    return DefenseOutcome(
        distortion=d["distortion"],
        top_overlap=d["top_overlap"],
        non_adaptive=_metrics(d["non-adaptive"]),
        adaptive=_metrics(d["adaptive"]),
        adaptive_attack=d["adaptive_attack"],
    )
