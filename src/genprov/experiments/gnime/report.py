"""The HTML report of ``genprov reproduce gnime``, built from its typed :class:`GNIMEResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from genprov.eval.stats import MeanCI
from genprov.experiments.gnime.config import GNIMEExperimentConfig
from genprov.experiments.gnime.results import GNIMEResult, SweepPoint
from genprov.experiments.quickstart import grid_image
from genprov.privacy import Observations
from genprov.report import Figure, KeyValue, Report, Section, Table, Text
from genprov.report.figures import PALETTE, training_curves

__all__ = ["GRID_ROWS", "as_image", "build_report", "convergence_row", "image_grid"]

_THREATS = ("adaptive", "non-adaptive")


def as_image(maps: Tensor) -> Tensor:
    """[0, 1] explanation maps (defended ones clipped for display) as [-1, 1] images."""
    return maps.clamp(0, 1) * 2 - 1


def image_grid(
    config: GNIMEExperimentConfig,
    data: Mapping[str, tuple[Tensor, Tensor]],
    observations: Mapping[str, Observations],
    recs: Mapping[str, Tensor],
    main: Mapping[str, Any],
) -> Tensor:
    """Rows: originals, clean maps, GNIME maps, RND maps, ExpMI (clean), adaptive vs GNIME / RND,
    non-adaptive vs GNIME, PredMI; ``n_grid`` test images each (the first of each class, then the rest)."""
    x, y = data["test"]
    n = min(config.n_grid, len(x))
    first: list[int] = []
    for c in torch.unique(y).tolist():
        first.append(int(torch.nonzero(y == c)[0]))
    order = first + [i for i in range(len(x)) if i not in set(first)]
    idx = torch.tensor(sorted(order[:n]))
    rows = [
        x[idx],
        as_image(cast(Tensor, observations["test"].explanations)[idx]),
        as_image(main["gnime"]["defended_test"][idx]),
        as_image(main["rnd"]["defended_test"][idx]),
        recs["exp-mi"][idx],
        main["gnime"]["reconstructions"]["adaptive"][idx],
        main["rnd"]["reconstructions"]["adaptive"][idx],
        main["gnime"]["reconstructions"]["non-adaptive"][idx],
        recs["pred-mi"][idx],
    ]
    return torch.cat(rows)


GRID_ROWS = (
    "originals",
    "clean explanations",
    "GNIME-defended explanations",
    "RND-defended explanations (same distortion)",
    "ExpMI on clean explanations",
    "adaptive ExpMI vs GNIME",
    "adaptive ExpMI vs RND",
    "non-adaptive ExpMI vs GNIME",
    "PredMI (predictions only)",
)


def _curves(result: GNIMEResult) -> MplFigure:
    """Attacker MSE / SSIM / TCA against explanation distortion; rows: adaptive, non-adaptive attacker."""
    metrics = (("mse", "attacker MSE (higher = more private)"), ("ssim", "attacker SSIM"), ("tca", "TCA"))
    sweep, baseline = result.sweep, result.baseline
    fig = MplFigure(figsize=(12.0, 7.0), layout="constrained", facecolor="white")
    axes = fig.subplots(2, 3, squeeze=False)
    for r, threat in enumerate(("adaptive", "non-adaptive")):
        for c, (metric, label) in enumerate(metrics):
            ax = axes[r][c]
            series: dict[str, list[tuple[float, MeanCI]]] = {"GNIME": [], "RND": []}
            for p in sweep:
                series["GNIME"].append((p.gnime.distortion.mean, _ci(p.gnime.against(threat), metric)))
                series["RND"].append((p.rnd.distortion.mean, _ci(p.rnd.against(threat), metric)))
            for e in result.rnd_extra:
                series["RND"].append((e.rnd.distortion.mean, _ci(e.rnd.against(threat), metric)))
            for i, (name, pts) in enumerate(series.items()):
                pts = sorted((d, m) for d, m in pts if d > 0)
                if not pts:
                    continue
                xs = np.array([d for d, _ in pts])
                ys = np.array([m.mean for _, m in pts])
                err = np.array([[m.mean - m.low for _, m in pts], [m.high - m.mean for _, m in pts]])
                ax.errorbar(xs, ys, yerr=err, color=PALETTE[i], marker="o", ms=4, lw=1.6, capsize=2, label=name)
            if sweep:
                for a_pt in sweep:
                    ax.annotate(
                        f"a={a_pt.a:g}",
                        (a_pt.gnime.distortion.mean, _ci(a_pt.gnime.against(threat), metric).mean),
                        xytext=(3, 3),
                        textcoords="offset points",
                        fontsize=7,
                        color=PALETTE[0],
                    )
            pred = _ci(baseline["pred-mi"], metric)
            ax.axhline(pred.mean, color="#4b5563", ls="--", lw=1.2, label="PredMI (floor)")
            ax.axhspan(pred.low, pred.high, color="#4b5563", alpha=0.12)
            ax.axhline(_ci(baseline["exp-mi"], metric).mean, color=PALETTE[2], ls=":", lw=1.2, label="no defense")
            ax.set_xscale("log")
            ax.set_xlabel("explanation distortion (MSE of maps in [0, 1])", fontsize=9)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(f"{threat} attacker", fontsize=10, loc="left")
            ax.grid(True, color="#e5e7eb", lw=0.8)
            if r == 0 and c == 0:
                ax.legend(frameon=False, fontsize=8)
    return fig


def convergence_row(a: float, history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Steps, last-epoch losses and the relative change of the distortion and privacy terms over the last
    10% of the epochs (at least 2) of one GNIME training history."""
    last = history[-1]
    tail = max(2, len(history) // 10)
    ref = history[max(0, len(history) - tail)]

    def change(key: str) -> float:
        return (last[key] - ref[key]) / abs(ref[key]) if ref[key] else float("nan")

    return {
        "a": a,
        "steps": int(last["step"]),
        "distortion": last["distortion"],
        "distortion [0, 1]": last["distortion_raw"],
        "privacy (surrogate MSE)": last["privacy"],
        "surrogate MSE clean": last["inverter_mse_clean"],
        "change distortion, last 10%": change("distortion"),
        "change privacy, last 10%": change("privacy"),
    }


def _ablation_section(result: GNIMEResult) -> Section:
    """Both GNIME variants at the main weight, each beside its own matched RND."""
    section = Section(
        "ablation",
        f"Ablation: GNIME variants (a = {result.main_a:g})",
        intro="unet: the original's GNIME (ExpMI U-Net generator reading the standardised map and the logits, "
        "distortion in standardised units, maps clipped to [0, 1], linear surrogate, simultaneous updates, "
        "lr 1e-4). residual: genprov's earlier variant (4-layer conv generator adding noise to the raw map, "
        "raw units, no clipping, clamped privacy term, alternating updates, lr 1e-3). Each variant is compared "
        "with the RND of its own distortion; p (Holm) is adjusted over this table's four comparisons.",
    )
    rows = []
    for r in result.ablation:
        for threat in _THREATS:
            c = r.comparison[threat]
            rows.append(
                {
                    "variant": r.variant,
                    "steps": r.settings.get("steps"),
                    "threat": threat,
                    "distortion [0, 1]": r.distortion,
                    "distortion (standardised)": r.distortion.mean / r.gnime_map_std**2,
                    "MSE GNIME": r.gnime.against(threat)["mse"],
                    "MSE RND": r.rnd.against(threat)["mse"],
                    "MSE gain of GNIME": c.mse_gain,
                    "p (Holm)": c.mse_p_holm,
                }
            )
    section.add(
        Table(
            rows,
            caption="Attacker MSE on the test images (images in [0, 1]; higher = more private).",
            float_format={
                "distortion [0, 1]": ".4g",
                "distortion (standardised)": ".4g",
                "MSE GNIME": ".4f",
                "MSE RND": ".4f",
                "MSE gain of GNIME": ".4f",
                "p (Holm)": ".3g",
            },
        )
    )
    return section


def _ci(metrics: Mapping[str, Any], name: str) -> MeanCI:
    return cast(MeanCI, metrics[name])


def _sweep_rows(sweep: Sequence[SweepPoint], threat: str) -> list[dict[str, Any]]:
    rows = []
    for p in sweep:
        c = p.comparison[threat]
        gnime, rnd = p.gnime.against(threat), p.rnd.against(threat)
        rows.append(
            {
                "a": p.a,
                "distortion GNIME": p.gnime.distortion,
                "distortion GNIME (standardised)": p.gnime.distortion.mean / p.gnime_map_std**2,
                "distortion RND": p.rnd.distortion,
                "top-q overlap GNIME": p.gnime.top_overlap.mean,
                "top-q overlap RND": p.rnd.top_overlap.mean,
                "MSE GNIME": gnime["mse"],
                "MSE RND": rnd["mse"],
                "MSE gain of GNIME": c.mse_gain,
                "p": c.mse_p_value,
                "p (Holm)": c.mse_p_holm,
                "TCA GNIME": _ci(gnime, "tca").mean,
                "TCA RND": _ci(rnd, "tca").mean,
                "TCA cut of GNIME": c.tca_gain,
                "both at floor": c.gnime_at_floor and c.rnd_at_floor,
            }
        )
    return rows


def build_report(config: GNIMEExperimentConfig, result: GNIMEResult, *, grid: Tensor) -> Report:
    """The report: headline, the paper's tables, privacy-utility curves, the image grid (rows as
    :data:`GRID_ROWS`, from :func:`image_grid`) and training details."""
    report = Report(
        "Explanation privacy: inversion attacks and the GNIME defense",
        subtitle="Jeong et al., NeurIPS 2022, at small scale",
        meta={
            "dataset": config.data,
            "explainer": config.explainer,
            "seed": config.seed,
            "image size": config.size,
            "quick": config.quick,
            "GNIME variant": config.defense_variant,
        },
    )
    sizes, baseline = result.splits, result.baseline
    overview = Section(
        "overview",
        "Headline",
        intro=f"A victim CNN on {config.data} ({config.size}x{config.size}) releases `{config.explainer}` "
        "explanations and its prediction vector. An attacker trains decoders (ExpMI: explanation + prediction; "
        "PredMI: prediction only) on their own data to rebuild private inputs. GNIME replaces each explanation "
        f"by a learned defended map ({config.defense_variant} variant); RND adds Gaussian noise of the same "
        "distortion. Wins of GNIME over RND are claimed only where they survive the Holm correction over the "
        "sweep. Splits: "
        f"defender {sizes['defender']}, attacker {sizes['attacker_train']} + {sizes['attacker_val']} "
        f"(early stopping), held-out test {sizes['test']} (every figure below). Intervals: 95% bootstrap over "
        "test images.",
    )
    if config.quick:
        overview.add(Text("Quick run: less data, fewer epochs and one sweep point; numbers are rough.", tone="note"))
    acc = result.classifier_test_accuracy
    overview.add(
        KeyValue(
            {
                "victim test accuracy": acc["victim"],
                "evaluation classifier test accuracy": acc["evaluator"],
                "ExpMI MSE (no defense)": baseline["exp-mi"]["mse"],
                "PredMI MSE (floor)": baseline["pred-mi"]["mse"],
            },
            float_format=".4f",
        ),
        Text("**Finding.** " + result.finding.text),
    )
    report.add(overview)
    fmt = {"mse": ".4f", "distortion": ".4f", "psnr": ".2f"}
    columns = ["attack", "mse", "ssim", "psnr", "tca", "distortion", "top_overlap", "reclassification_accuracy"]
    tables_section = Section(
        "tables",
        f"The paper's table (GNIME a = {config.main_a:g})",
        intro="MSE, SSIM, PSNR on images in [0, 1] (lower MSE, higher SSIM / PSNR / TCA = more leakage); TCA: "
        "accuracy of the independent evaluation classifier on the reconstructions; distortion: MSE between "
        f"defended and clean maps; top_overlap: share of the clean map's top {config.top_q:.0%} pixels kept. "
        "RND has GNIME's distortion (matched on the defender's data).",
    )
    for threat, table in result.table.items():
        rows = [{f.name: getattr(r, f.name) for f in dataclasses.fields(r)} for r in table]
        what = (
            "the attacker's ExpMI was trained on clean explanations and meets defended ones"
            if threat == "non-adaptive"
            else "a fresh ExpMI is trained on the defended explanations (the paper's setting)"
        )
        tables_section.add(
            Table(rows, caption=f"{threat.capitalize()} attacker: {what}.", columns=columns, float_format=fmt)
        )
    report.add(tables_section)

    curves = Section(
        "curves",
        "Privacy-utility curves",
        intro="Each GNIME point is one weight a; each RND point has the distortion of the GNIME point of the same "
        "a (plus any extra noise levels). Higher MSE / lower SSIM / lower TCA at the same distortion = more "
        "privacy for the same utility cost. The grey band is PredMI (the floor while predictions are "
        "released), the dotted line the undefended ExpMI.",
    )
    curves.add(Figure(_curves(result), caption="Attacker success against explanation distortion."))
    for threat in ("adaptive", "non-adaptive"):
        curves.add(
            Table(
                _sweep_rows(result.sweep, threat),
                caption=f"{threat.capitalize()} attacker at every sweep point. Gains are paired differences over "
                "the same test images (positive = GNIME more private than RND), with 95% intervals (not adjusted); "
                "p: two-sided paired sign-flip test of the MSE gain; p (Holm): adjusted over every sweep point and "
                "both threat models (a win needs p (Holm) < 0.05). Distortion: MSE of the released [0, 1] maps; "
                "standardised: divided by the defender's map variance, the units of GNIME's training loss and of "
                "the paper's a.",
                float_format={
                    "a": "g",
                    "MSE gain of GNIME": ".4f",
                    "MSE GNIME": ".4f",
                    "MSE RND": ".4f",
                    "distortion GNIME": ".4g",
                    "distortion GNIME (standardised)": ".4g",
                    "distortion RND": ".4g",
                    "p": ".3g",
                    "p (Holm)": ".3g",
                },
            )
        )
    report.add(curves)

    grid_section = Section(
        "grid",
        "Originals, explanations and reconstructions",
        intro=f"Test images (columns); rows, top to bottom: {'; '.join(GRID_ROWS)}. Defense rows use a = "
        f"{config.main_a:g}. Maps are shown in [0, 1] (defended maps clipped for display).",
    )
    n = len(grid) // len(GRID_ROWS)
    grid_section.add(grid_image(grid, "Rows as listed above.", nrow=n, width_px=640))
    report.add(grid_section)

    if result.ablation:
        report.add(_ablation_section(result))
    training = Section(
        "training",
        "Training details",
        intro="GNIME's losses against training steps (the original trains about 17,000 steps: 500 epochs of "
        "35,000 maps in batches of 1,024). The table gives every sweep point's steps, its last epoch's losses "
        "and the relative change of the generator's distortion and privacy terms over the last 10% of the "
        "epochs (a plateau shows as a change near 0).",
    )
    main = next((p for p in result.sweep if p.a == config.main_a), None)
    if main is not None and main.gnime_history:
        training.add(
            Figure(
                training_curves(
                    main.gnime_history,
                    ["distortion", "privacy", "inverter_mse_defended", "inverter_mse_clean"],
                    x="step",
                ),
                caption=f"GNIME (a = {config.main_a:g}): the distortion term (standardised units for the U-Net "
                "variant), the privacy term and the surrogate inverter's errors (images in [0, 1]), per epoch.",
            )
        )
    training.add(
        Table(
            [convergence_row(p.a, p.gnime_history) for p in result.sweep if p.gnime_history],
            caption="GNIME's training at every sweep point.",
            float_format=".4g",
        )
    )
    training.add(
        Table(
            [{"step": k, "seconds": v} for k, v in result.timings_seconds.items()],
            caption="Wall-clock time per step.",
            float_format=".1f",
        )
    )
    report.add(training)
    return report
