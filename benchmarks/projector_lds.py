"""LDS of the ``kronecker`` projector vs the sketch projector (``sjlt``) at the same k, on a digits LDS benchmark.

Part of ``bench_trak_kronecker`` (issue 19: kronecker's LDS within the confidence interval of sjlt's). Everything
comes from the library, as ``genprov reproduce dtrak`` runs it:

- the settings: :class:`~genprov.experiments.dtrak.DTRAKExperimentConfig` of ``--data digits --set
  budget=reduced`` (the ``small`` DDPM on 8x8 digits, 400 training images, D-TRAK's training recipe, K=10,
  k=1024, the lambda grid) with a smaller ground truth (:data:`FULL`: 16 subsets x 2 seeds, 30 epochs,
  100 draws per query, 32 real + 32 generated queries); ``--quick``: :data:`QUICK`, a tiny smoke run;
- the model attributed: a DDPM trained on the whole training set with that recipe (``train_ddpm``), whose
  samples are the generated queries;
- the benchmark: :func:`~genprov.eval.lds_benchmark.build_lds_benchmark` of an
  :class:`~genprov.eval.lds_benchmark.LDSPlan` of the same recipe (half of each query kind chooses lambda);
- the scores: TRAK (``loss``) and D-TRAK (``squared-l2-norm``) with each projector at the same ``proj_dim``,
  featurized and scored over the lambda grid by ``featurize_and_score``;
- the LDS: :func:`~genprov.eval.lds.evaluate_lds` (lambda chosen on the validation queries, LDS with its 95%
  bootstrap interval over the test queries, the noise ceiling), and the paired difference kronecker - sjlt
  per query at each one's chosen lambda (:func:`~genprov.eval.stats.paired_difference_ci`).

It runs in one spawned single-threaded process; the benchmark's models train there one after the other
(``workers`` > 1: in that many spawned processes; the losses are the same either way). Its models and stores
live in a temporary folder, deleted at the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import in_child

__all__ = ["FULL", "QUICK", "lds_comparison", "lds_section"]

#: ``DTRAKExperimentConfig`` keys of the full run: ``reproduce dtrak --data digits --set budget=reduced`` with a
#: smaller ground truth (a few minutes of training on one core).
FULL: dict[str, Any] = {
    "data": "digits",
    "budget": "reduced",
    "n_subsets": 16,
    "n_seeds": 2,
    "train_epochs": 30,
    "eval_draws": 100,
    "n_real_queries": 32,
    "n_gen_queries": 32,
}
#: The ``--quick`` smoke run: the ``tiny`` DDPM, 64 images, 4 subsets x 2 seeds of 4 epochs.
QUICK: dict[str, Any] = {
    "data": "digits",
    "quick": True,
    "n_train": 64,
    "train_epochs": 4,
    "n_subsets": 4,
    "n_seeds": 2,
    "n_real_queries": 8,
    "n_gen_queries": 8,
    "eval_draws": 8,
    "n_boot": 100,
}
PROJECTORS = ("sjlt", "kronecker")


def lds_comparison(settings: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    """Build the benchmark of ``settings`` (``DTRAKExperimentConfig`` keys), score TRAK and D-TRAK with each
    projector, and evaluate them (run it in its own process: it sets one torch thread).

    Returns:
        ``{"config", "n_params", "feature_dim", "coverage", "lds" (evaluate_lds's output), "paired"}`` with
        ``paired[kind][method]`` the ``MeanCI`` dict of kronecker - sjlt.
    """
    from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
    from genprov.data import load_train_test
    from genprov.eval.data_attribution import linear_datamodeling_score
    from genprov.eval.lds import evaluate_lds
    from genprov.eval.lds_benchmark import LDSPlan, build_lds_benchmark
    from genprov.eval.stats import paired_difference_ci
    from genprov.experiments.dtrak import DTRAKExperimentConfig
    from genprov.experiments.dtrak.config import train_config_values
    from genprov.experiments.dtrak.run import METHODS, featurize_and_score, lds_benchmark_config
    from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_sample
    from genprov.models.train_config import TrainConfig
    from genprov.models.training import train_ddpm
    from genprov.storage.shards import InProcessBackend, ProcessBackend

    torch.set_num_threads(1)
    cfg = DTRAKExperimentConfig.from_dict(settings)
    train, test = load_train_test(
        cfg.data, resize=cfg.image_size, n_train=cfg.n_train, n_test=cfg.n_real_queries, seed=cfg.seed
    )
    model_cfg = DDPMConfig.preset(cfg.preset, image_size=cfg.image_size, channels=train.n_channels)
    recipe = TrainConfig(**train_config_values(cfg, len(train), cfg.seed))
    backend = InProcessBackend() if workers <= 1 else ProcessBackend(workers)
    scores: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    coverage: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="genprov-bench-lds-") as tmp:
        folder = Path(tmp)
        model = train_ddpm(model_cfg, recipe, train.images, folder / "main", show_progress=False).model
        assert isinstance(model, DDPM)
        generated = ddpm_sample(model, cfg.n_gen_queries, seed=cfg.seed, show_progress=False)
        queries = torch.cat([test.images, generated])
        kinds = ["real"] * len(test) + ["generated"] * len(generated)
        config = lds_benchmark_config(cfg, recipe)
        plan = LDSPlan.make(config, model_cfg, train.images, queries, kinds=kinds)
        bench = build_lds_benchmark(plan, folder / "losses", backend, show_progress=False)
        for label, output_function in METHODS:
            for projector in PROJECTORS:
                trak = TRAKConfig(
                    n_timesteps=cfg.n_timesteps,
                    proj_dim=cfg.proj_dim,
                    projector=projector,
                    output_function=output_function,
                    seed=cfg.seed,
                )
                fitted = featurize_and_score(
                    TRAKAttributor(model, config=trak), train, queries, cfg.relative_dampings, folder / "stores", False
                )
                scores[f"{label} {projector}"] = fitted.scores
                dims[projector] = fitted.attributor.feature_dim
                coverage[projector] = fitted.attributor.parameter_coverage
    lds = evaluate_lds(scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed, n_boot=cfg.n_boot)
    outputs = bench.outputs()
    paired: dict[str, dict[str, Any]] = {}
    for kind, rows in lds["methods"].items():
        test_cols = np.flatnonzero((bench.kinds == kind) & ~bench.val)
        per_query = {
            name: linear_datamodeling_score(
                scores[name][rows[name]["lambda_index"]][test_cols], bench.masks, outputs[:, test_cols]
            )
            for name in scores
        }
        paired[kind] = {}
        for label, _ in METHODS:
            a, b = per_query[f"{label} kronecker"], per_query[f"{label} sjlt"]
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() >= 2:
                diff = paired_difference_ci(a[ok], b[ok], seed=cfg.seed, n_boot=cfg.n_boot)
                paired[kind][label] = diff.to_dict()
    return {
        "config": cfg.to_dict(),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "feature_dim": dims,
        "coverage": coverage,
        "lds": lds,
        "paired": paired,
    }


def _ci(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "n/a"
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"


def lds_section(quick: bool, *, workers: int = 1) -> str:
    """The Markdown table of :func:`lds_comparison` (:data:`QUICK` or :data:`FULL`), run in a spawned process."""
    r = in_child(lds_comparison, QUICK if quick else FULL, workers)
    cfg = r["config"]
    lines = [
        "### LDS: kronecker vs sjlt at the same k (bench_trak_kronecker)",
        "",
        f"{cfg['data']} {cfg['image_size']}x{cfg['image_size']}, DDPM `{cfg['preset']}` ({r['n_params']:,} parameters, "
        f"{cfg['train_recipe']} recipe, {cfg['train_epochs']} epochs), n_train={cfg['n_train']}; benchmark built by "
        f"build_lds_benchmark: {cfg['n_subsets']} subsets x {cfg['n_seeds']} seeds (alpha {cfg['subset_fraction']}), "
        f"{cfg['eval_draws']} draws per query, {cfg['n_real_queries']} real + {cfg['n_gen_queries']} generated "
        "queries, half of each kind choosing lambda (relative grid), LDS on the rest. "
        f"K={cfg['n_timesteps']}, k={cfg['proj_dim']} (feature dim: sjlt {r['feature_dim']['sjlt']}, kronecker "
        f"{r['feature_dim']['kronecker']}, which covers {r['coverage']['kronecker']:.3f} of the parameters). "
        f"95% bootstrap intervals over test queries ({cfg['n_boot']} resamples); the difference is paired per query.",
        "",
        "| queries | method | sjlt LDS [95% CI] | kronecker LDS [95% CI] | kronecker - sjlt [95% CI] "
        "| kronecker within sjlt's CI | noise ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, rows in sorted(r["lds"]["methods"].items(), key=lambda item: (item[0] != "real", item[0])):
        ceiling = _ci(r["lds"]["noise_ceiling"].get(kind))
        for label in ("TRAK", "D-TRAK"):
            sjlt, kron = rows[f"{label} sjlt"]["lds"], rows[f"{label} kronecker"]["lds"]
            within = "yes" if sjlt["low"] <= kron["mean"] <= sjlt["high"] else "no"
            lines.append(
                f"| {kind} | {label} | {_ci(sjlt)} | {_ci(kron)} | {_ci(r['paired'][kind].get(label))} | {within} "
                f"| {ceiling} |"
            )
    return "\n".join(lines) + "\n"
