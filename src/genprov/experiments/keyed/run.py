"""The runner of ``genprov reproduce keyed`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the root DCGAN, the plain, robust and ablation families, measures them under every test condition
and returns a :class:`KeyedResult`."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.model.keyed import (
    AMBIGUOUS,
    NONE,
    KeyedGenerators,
    KeyedGeneratorsConfig,
    attribution_rule,
)
from genprov.attribution.model.keyed_postprocess import (
    BASIC_POST_PROCESSES,
    apply_post_process,
    check_post_process_names,
)
from genprov.data import ImageDataset, jpeg_roundtrip, load_train_test, png_roundtrip
from genprov.eval import FrechetDistance, attributability, distinguishability, psnr, ssim
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, start_run
from genprov.experiments.keyed.config import KeyedExperimentConfig
from genprov.experiments.keyed.report import build_report
from genprov.experiments.keyed.results import (
    ConditionEvaluation,
    ConditionMetrics,
    GoalCheck,
    KeyedResult,
    KeyInfo,
    UserMetrics,
)
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.gans import GANConfig
from genprov.models.training import default_train_config, train_classifier, train_gan
from genprov.utils.seeding import derive_seed, torch_generator

__all__ = ["apply_test_condition", "check_goals", "evaluate_family", "finite_mean", "run_keyed"]

#: The paper's goals: clean distinguishability and attributability, and attributability under a post-process
#: after robust training against it.
CLEAN_GOAL = 0.99
ROBUST_GOAL = 0.9


def apply_test_condition(x: Tensor, name: str, config: KeyedExperimentConfig, *, seed: int) -> Tensor:
    """Apply the test condition ``name`` (``"clean"`` or a post-process) and save as 8-bit PNG.

    Blur, crop and noise use the differentiable post-processes at test strength
    (:meth:`KeyedExperimentConfig.condition_strengths`; blur with the family's kernel rule); JPEG is a
    real Pillow JPEG (``genprov.data.perturb``). Noise for image ``k`` of a batch is drawn from
    ``(seed, name)``, so every model sees the same noise.

    Args:
        x: (n, C, H, W) images in [-1, 1].
        name: ``"clean"`` or a condition of :meth:`KeyedExperimentConfig.test_conditions`.
        config: The test strengths.
        seed: Seed of the noise.

    Returns:
        (n, C, H, W) images in [-1, 1], quantised to 8 bits.
    """
    if name != "clean":
        check_post_process_names((name.partition("@")[0].removesuffix("-mild"),))
        strengths = config.condition_strengths(name)
        for step in BASIC_POST_PROCESSES:
            if step not in strengths:
                continue
            value = strengths[step]
            if step == "jpeg":
                x = jpeg_roundtrip(x, round(value))
            elif step == "noise":
                noise = torch.randn(x.shape, generator=torch_generator(seed, "test-noise", name))
                x = apply_post_process(x, "noise", value, noise=noise)
            else:
                x = apply_post_process(x, step, value, blur_kernel=config.family.post_process.blur_kernel)
    return png_roundtrip(x.detach())


def finite_mean(values: Tensor) -> float:
    """Mean of the finite entries of ``values`` (``inf`` when none is finite, e.g. PSNR of identical images)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("inf")


def evaluate_family(
    family: KeyedGenerators,
    real: Tensor,
    fd: FrechetDistance,
    config: KeyedExperimentConfig,
    conditions: tuple[str, ...],
    *,
    seed: int,
) -> dict[str, ConditionEvaluation]:
    """Every metric of ``family`` under each test condition.

    Args:
        family: The keyed family.
        real: (n, C, H, W) held-out authentic images.
        fd: Fréchet distance with its reference already set (authentic test images).
        config: Test strengths and ``n_eval``.
        conditions: ``"clean"`` and / or post-process names.
        seed: Evaluation seed (latents and noise); the same for every family.

    Returns:
        Condition -> the family's metrics and one row per user model.
    """
    n = config.n_eval
    x0 = family.sample(-1, n, seed=seed)
    xs = [family.sample(i, n, seed=seed) for i in range(family.n_keys)]
    out: dict[str, ConditionEvaluation] = {}
    for cond in conditions:
        p0 = apply_test_condition(x0, cond, config, seed=seed)
        pr = apply_test_condition(real, cond, config, seed=seed)
        r_real = family.responses(pr).numpy()
        users = [apply_test_condition(x, cond, config, seed=seed) for x in xs]
        responses = [family.responses(u).numpy() for u in users]
        stacked = np.concatenate(responses)
        source = np.repeat(np.arange(family.n_keys), n)
        labels = attribution_rule(stacked)
        per_user = tuple(
            UserMetrics(
                user=i,
                distinguishability=distinguishability(r_real[:, i], r[:, i]),
                attributability=float((labels[source == i] == i).mean()),
                l2_to_g0=float((u - p0).flatten(1).norm(dim=1).mean()),
                psnr=finite_mean(psnr(u, p0)),
                ssim=float(ssim(u, p0).mean()),
                frechet=fd.score(u),
            )
            for i, (u, r) in enumerate(zip(users, responses, strict=True))
        )
        metrics = ConditionMetrics(
            distinguishability=float(np.mean([p.distinguishability for p in per_user])),
            distinguishability_min=float(min(p.distinguishability for p in per_user)),
            attributability=attributability(-stacked, source),
            attributability_min=float(min(p.attributability for p in per_user)),
            user_samples_none=float((labels == NONE).mean()),
            user_samples_ambiguous=float((labels == AMBIGUOUS).mean()),
            user_samples_other_user=float(((labels >= 0) & (labels != source)).mean()),
            real_attributed_none=float((attribution_rule(r_real) == NONE).mean()),
            g0_attributed_none=float((attribution_rule(family.responses(p0)) == NONE).mean()),
            l2_to_g0=float(np.mean([p.l2_to_g0 for p in per_user])),
            psnr=float(np.mean([p.psnr for p in per_user])),
            ssim=float(np.mean([p.ssim for p in per_user])),
            frechet=float(np.mean([p.frechet for p in per_user])),
            frechet_g0=fd.score(p0),
        )
        out[cond] = ConditionEvaluation(metrics=metrics, per_user=per_user)
    return out


def check_goals(
    metrics: dict[str, dict[str, ConditionMetrics]], post_processes: tuple[str, ...]
) -> tuple[GoalCheck, ...]:
    """The paper's goals on a run: the plain family's clean D and A >= 0.99, and each robust family's A
    under its own post-process (at the run's strengths) >= 0.9; a family that was not trained is skipped."""
    checks = [
        ("plain", "clean", metric, CLEAN_GOAL, f"{short} >= {CLEAN_GOAL} clean")
        for metric, short in (("distinguishability", "D"), ("attributability", "A"))
    ]
    checks += [
        (f"robust-{p}", p, "attributability", ROBUST_GOAL, f"A >= {ROBUST_GOAL} under {p} after robust training")
        for p in post_processes
    ]
    out = []
    for family, condition, metric, threshold, goal in checks:
        if family in metrics and condition in metrics[family]:
            value = float(getattr(metrics[family][condition], metric))
            out.append(GoalCheck(goal, family, condition, metric, value, threshold, value >= threshold))
    return tuple(out)


def _load_data(config: KeyedExperimentConfig) -> tuple[ImageDataset, ImageDataset]:
    size = config.side
    train, test = load_train_test(
        config.data, data_root=config.data_root, resize=size, n_train=config.n_gan_train, seed=config.seed
    )
    if len(test) > config.n_real_eval:
        order = torch.randperm(len(test), generator=torch_generator(config.seed, "keyed-test-subset"))
        test = test.subset(order[: config.n_real_eval])
    return train, test


def _variant_config(variant: str, base: KeyedGeneratorsConfig, config: KeyedExperimentConfig) -> KeyedGeneratorsConfig:
    if variant == "alternating":
        return base.replace(key_training="alternating")
    if variant == "robust-keys":
        return base.replace(key_training="alternating", robust=tuple(config.post_processes), robust_keys=True)
    noise_max = base.post_process.noise_sigma[1]
    if variant == "compliance-margin":
        return base.replace(compliance_distance=3.0 * noise_max)
    return base.replace(robust=("noise",), robust_distance=3.0 * noise_max)


def _train_root(
    config: KeyedExperimentConfig, train: ImageDataset, models: Path, show_progress: bool | None
) -> tuple[Any, CNNClassifier]:
    size = config.side
    gan = GANConfig(
        arch="dcgan", image_size=size, channels=train.n_channels, width=config.gan_width, latent_dim=config.latent_dim
    )
    root = train_gan(
        gan,
        default_train_config(gan, n_steps=config.gan_steps, seed=config.seed),
        train,
        models / "root",
        show_progress=show_progress,
    )
    if train.labels is None:
        raise ConfigError(f"The Fréchet-distance classifier needs labelled data; {train.name!r} has none.")
    clf_cfg = ClassifierConfig(image_size=size, channels=train.n_channels, n_classes=int(train.labels.max()) + 1)
    clf = train_classifier(
        clf_cfg,
        default_train_config(clf_cfg, n_steps=config.classifier_steps, seed=config.seed),
        train,
        models / "classifier",
        show_progress=show_progress,
    )
    assert isinstance(clf.model, CNNClassifier)
    return root, clf.model


@EXPERIMENTS.register("keyed", config=KeyedExperimentConfig)
def run_keyed(
    config: KeyedExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> KeyedResult:
    """Run the keyed-generators experiment; write ``results.json`` and ``report.html`` into ``out_dir``.

    Families are cached in ``out_dir/families`` (resumable), models in ``out_dir/models``.

    Returns:
        Everything measured (its ``to_dict()`` is ``results.json``).
    """
    config, out = start_run(config, out_dir, data_root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train, test = _load_data(config)
    root, classifier = _train_root(config, train, out / "models", show_progress)
    timings["root and classifier"] = time.perf_counter() - t0
    fd = FrechetDistance(classifier.eval().features, batch_size=512)
    fd.reference(test.images)
    eval_seed = derive_seed(config.seed, "keyed-evaluation")
    conditions = config.test_conditions()
    fam_cfg = config.family_config()
    families_dir = out / "families"

    t = time.perf_counter()
    plain = KeyedGenerators.create(
        root.checkpoint, config.n_keys, fam_cfg, out=families_dir / "plain", real=train, show_progress=show_progress
    )
    timings["plain family"] = time.perf_counter() - t
    families: dict[str, KeyedGenerators] = {"plain": plain}
    for name in config.post_processes:
        t = time.perf_counter()
        families[f"robust-{name}"] = plain.make_robust(
            (name,), out=families_dir / f"robust-{name}", real=train, show_progress=show_progress
        )
        timings[f"robust-{name} family"] = time.perf_counter() - t
    for variant in config.variants:
        t = time.perf_counter()
        cfg = _variant_config(variant, fam_cfg, config)
        if variant == "noise-margin":
            families[variant] = plain.make_robust(
                cfg.robust,
                out=families_dir / variant,
                real=train,
                show_progress=show_progress,
                robust_distance=cfg.robust_distance,
            )
        else:
            families[variant] = KeyedGenerators.create(
                root.checkpoint, config.n_keys, cfg, out=families_dir / variant, real=train, show_progress=show_progress
            )
        timings[f"{variant} family"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluations = {
        name: evaluate_family(fam, test.images, fd, config, conditions, seed=eval_seed)
        for name, fam in families.items()
    }
    timings["evaluation"] = time.perf_counter() - t
    thresholds = plain.threshold_angles(train.images)
    key_info = KeyInfo(
        angles_degrees=tuple(tuple(row) for row in plain.angles().round(4).tolist()),
        threshold_angles_degrees=tuple(
            tuple(None if math.isnan(v) else round(float(v), 4) for v in row) for row in thresholds
        ),
        max_threshold_angle=float(np.nanmax(thresholds)) if config.n_keys > 1 else None,
        min_angle=float(np.min(plain.angles() + np.eye(config.n_keys) * 360)) if config.n_keys > 1 else None,
        key_norms=tuple(float(k.norm()) for k in plain.keys),
        warnings={name: tuple(fam.warnings) for name, fam in families.items()},
    )
    timings["total"] = time.perf_counter() - t0
    metrics = {name: {c: e.metrics for c, e in fam.items()} for name, fam in evaluations.items()}
    result = KeyedResult(
        experiment="keyed",
        paper="Kim, Ren & Yang, Decentralized Attribution of Generative Models, ICLR 2021",
        config=config.to_dict(),
        conditions=conditions,
        test_strengths={c: config.condition_strengths(c) for c in conditions if c != "clean"},
        metrics=metrics,
        per_user={name: {c: e.per_user for c, e in fam.items()} for name, fam in evaluations.items()},
        keys=key_info,
        goals=check_goals(metrics, config.post_processes),
        psnr_to_root={name: m["clean"].psnr for name, m in metrics.items()},
        training={name: fam.manifest["members"] for name, fam in families.items()},
        timings_seconds={k: round(v, 1) for k, v in timings.items()},
        report="",
    )
    report = build_report(config, result, families, eval_seed)
    result = dataclasses.replace(result, report=str(report.write(out, filename="report.html")))
    result.write_json(out / "results.json")
    return result
