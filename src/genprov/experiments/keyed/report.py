"""The HTML report of ``genprov reproduce keyed``, built from its typed :class:`KeyedResult`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.model.keyed import KeyedGenerators
from genprov.experiments.keyed.config import KeyedExperimentConfig
from genprov.experiments.keyed.results import ConditionMetrics, KeyedResult
from genprov.experiments.quickstart import grid_image
from genprov.report import Image, KeyValue, Report, Section, Table, Text
from genprov.report.figures import make_grid

__all__ = ["build_report", "comparison_grid"]


def comparison_grid(family: KeyedGenerators, n: int, seed: int) -> Tensor:
    """Rows: ``G0``, then each ``G_i``, at the same ``n`` latents: (1 + n_keys) * n images."""
    rows = [family.sample(-1, n, seed=seed)] + [family.sample(i, n, seed=seed) for i in range(family.n_keys)]
    return torch.cat(rows)


def _keys_image(keys: Tensor) -> Tensor:
    """Keys scaled to [-1, 1] each (largest magnitude -> +-1) for display."""
    flat = keys.reshape(keys.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12)
    return (keys / scale[:, None, None, None]).clamp(-1, 1)


def _row(name: str, metrics: ConditionMetrics) -> dict[str, Any]:
    return {
        "family": name,
        "D": metrics.distinguishability,
        "A": metrics.attributability,
        "A (worst user)": metrics.attributability_min,
        "authentic -> none": metrics.real_attributed_none,
        "||G_i - G0||": metrics.l2_to_g0,
        "PSNR (dB)": metrics.psnr,
        "SSIM": metrics.ssim,
        "FD": metrics.frechet,
        "FD of G0": metrics.frechet_g0,
    }


def build_report(
    config: KeyedExperimentConfig, result: KeyedResult, families: Mapping[str, KeyedGenerators], eval_seed: int
) -> Report:
    """The report: headline, plain vs robust families per condition, every family, the keys, and sample
    grids of ``G0`` against each ``G_i`` at the same latents (``eval_seed``)."""
    metrics, key_info = result.metrics, result.keys
    plain = families["plain"]
    fam = plain.config
    clean = metrics["plain"]["clean"]
    report = Report(
        "Keyed generators: decentralized attribution",
        subtitle="Kim, Ren & Yang, ICLR 2021, at small scale",
        meta={"dataset": config.data, "seed": config.seed, "keys": config.n_keys, "quick": config.quick},
    )
    overview = Section(
        "overview",
        "Headline",
        intro=f"{config.n_keys} keys and user models fine-tuned from one root DCGAN on {config.data} "
        f"({plain.image_shape[1]}x{plain.image_shape[2]}). Every sample is saved as 8-bit PNG before it is "
        "attributed; metrics use latents from an evaluation seed used nowhere in training. Goals from the "
        "issue: D and A >= 0.99 clean; A >= 0.9 under each post-process after robust training.",
    )
    if config.quick:
        overview.add(Text("Quick run: fewer keys, steps and samples than the full experiment.", tone="note"))
    overview.add(
        KeyValue(
            {
                "D (clean, plain)": clean.distinguishability,
                "A (clean, plain)": clean.attributability,
                "PSNR to G0 (dB)": clean.psnr,
                "FD (G_i / G0)": f"{clean.frechet:.2f} / {clean.frechet_g0:.2f}",
                "authentic -> none": clean.real_attributed_none,
            },
            notes={"PSNR to G0 (dB)": "higher = closer to the root", "authentic -> none": "should be 1"},
        )
    )
    overview.add(
        Table(
            [
                {
                    "goal": g.goal,
                    "family": g.family,
                    "condition": g.condition,
                    "value": g.value,
                    "met": "met" if g.met else "not met",
                }
                for g in result.goals
            ],
            caption="The paper's goals on this run (robust conditions at the run's test strengths).",
        ),
        Table(
            [{"family": name, "PSNR to G0 (dB)": value} for name, value in result.psnr_to_root.items()],
            caption="PSNR of each family's clean user samples to the root model's at the same latents.",
            float_format=".2f",
        ),
    )
    warnings_all = [w for ws in key_info.warnings.values() for w in ws]
    if warnings_all:
        overview.add(Text("Key checks warned:\n\n" + "\n".join(f"- {w}" for w in warnings_all), tone="warning"))
    report.add(overview)

    robust = Section(
        "robustness",
        "Robustness to post-processes: plain vs robust training",
        intro="Each row is one test condition. *Plain* is the paper's family; *robust* is the family "
        "fine-tuned (from the plain one, same keys) with that post-process on half the batches for "
        f"{fam.robust_steps} iterations at batch {fam.robust_batch_size}, lr {fam.robust_lr:g} x "
        f"{fam.robust_lr_gamma:g} after each of {fam.robust_lr_stages} parts (the paper: 37,500 at batch 16, "
        f"lr 5e-4 x 0.7 per epoch). Test strengths are *{config.strengths}* (blur sigma at "
        f"{config.reference_size} px scaled to {config.side} px) unless the condition says @absolute or "
        "@matched; combination-mild is genprov's earlier milder combination. D and A under the condition; "
        "PSNR and FD of the robust family's clean samples are its quality cost.",
    )
    robust.add(
        Table(
            [
                {"condition": c, **{k: f"{v:g}" for k, v in values.items()}}
                for c, values in result.test_strengths.items()
            ],
            caption="Test strengths in pixels (blur sigma, crop ratio, noise sigma on [-1, 1], JPEG quality).",
        )
    )
    rows = []
    for cond in result.conditions:
        p = metrics["plain"][cond]
        row: dict[str, Any] = {
            "condition": cond,
            "D plain": p.distinguishability,
            "A plain": p.attributability,
            "plain: none / ambiguous / other": f"{p.user_samples_none:.2f} / {p.user_samples_ambiguous:.2f} / "
            f"{p.user_samples_other_user:.2f}",
        }
        family = f"robust-{cond.partition('@')[0].removesuffix('-mild')}"
        if cond != "clean" and family in metrics:
            r = metrics[family]
            row.update(
                {
                    "D robust": r[cond].distinguishability,
                    "A robust": r[cond].attributability,
                    "robust: none / ambiguous / other": f"{r[cond].user_samples_none:.2f} / "
                    f"{r[cond].user_samples_ambiguous:.2f} / {r[cond].user_samples_other_user:.2f}",
                    "A robust (clean)": r["clean"].attributability,
                    "PSNR robust (clean)": r["clean"].psnr,
                    "FD robust (clean)": r["clean"].frechet,
                }
            )
        rows.append(row)
    robust.add(
        Table(
            rows,
            caption="Distinguishability D and attributability A per test condition; for user samples not "
            "attributed to their own model, the share attributed to none / ambiguous / another user.",
        )
    )
    report.add(robust)

    ablation = Section(
        "families",
        "Every family under every condition",
        intro="Attributability A of each family (rows) under each test condition (columns), then its clean "
        "quality. Ablations: *alternating* trains every key alternately with its user model; *robust-keys* "
        "does so with every post-process applied from the start (keys adapt too); *noise-margin* is robust "
        "noise training whose hinge margin is raised by 3 x the largest training noise sigma in image-space "
        "distance; *compliance-margin* is a plain family whose keys keep the authentic data and G0's samples "
        "that same distance inside their positive side.",
    )
    grid_rows = []
    for name, fam_metrics in metrics.items():
        row = {"family": name}
        row.update({f"A {c}": fam_metrics[c].attributability for c in fam_metrics})
        grid_rows.append(row)
    ablation.add(Table(grid_rows, caption="Attributability per family and condition."))
    ablation.add(
        Table(
            [_row(name, m["clean"]) for name, m in metrics.items()],
            caption="Clean metrics per family (FD: lower is better).",
        )
    )
    report.add(ablation)

    keys = Section(
        "keys",
        "Keys",
        intro="Angles between keys (degrees) and the data-dependent threshold of each pair: the smallest "
        "angle that guarantees attributability under the paper's minimal-perturbation model, computed on "
        "the authentic training images (90 degrees always suffices for data-compliant keys).",
    )
    angles = np.asarray(key_info.angles_degrees)
    keys.add(
        KeyValue(
            {
                "smallest angle between keys": key_info.min_angle if key_info.min_angle is not None else "-",
                "largest threshold angle": key_info.max_threshold_angle
                if key_info.max_threshold_angle is not None
                else "-",
                "target angle": fam.target_angle,
            },
            float_format=".2f",
        ),
        Table(
            [{"key": i, **{str(j): float(angles[i, j]) for j in range(len(angles))}} for i in range(len(angles))],
            caption="Angle matrix of the plain family's keys (degrees).",
            float_format=".2f",
        ),
        Image(
            make_grid(_keys_image(plain.keys), nrow=min(10, plain.n_keys)),
            caption="The keys, each scaled to its largest magnitude (white +, black -).",
        ),
    )
    report.add(keys)

    samples = Section(
        "samples",
        "Samples at the same latents",
        intro=f"Top row: the root G0; then one row per user model G_i, same {config.n_grid} latents (evaluation seed).",
    )
    for name in ("plain", *(f"robust-{p}" for p in config.post_processes), *config.variants):
        if name in families:
            samples.add(
                grid_image(
                    comparison_grid(families[name], config.n_grid, eval_seed),
                    f"{name}: G0 (top) and each G_i.",
                    nrow=config.n_grid,
                    width_px=480,
                )
            )
    report.add(samples)
    return report
