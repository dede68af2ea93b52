"""``genprov reproduce dtrak``: D-TRAK vs TRAK on a small DDPM, with LDS and counterfactual evaluation.

Reproduces the key experiment of Zheng et al., "Intriguing properties of data attribution on diffusion
models" (ICLR 2024): attribution with the D-TRAK output (``squared-l2-norm``) against TRAK (``loss``),
measured by the linear datamodeling score (LDS, sec. 4 / app. B of the paper; Park et al., 2023, def. 2.3)
and by counterfactual retraining (sec. 5.2).

What a run does (every model, store and measurement is cached under ``--out``; a re-run reuses them):

1. Trains the DDPM on ``n_train`` images with the original's recipe (AdamW 1e-4, warm-up then cosine decay,
   weight decay, gradient clipping, no EMA; ``TRAIN_RECIPES``) for ``train_epochs`` epochs, records its loss
   curve and whether it plateaued, and draws generated queries from it; real queries are held-out test
   images. Models and stores live under a folder named after the recipe, so runs of other recipes keep
   their caches.
2. Featurizes the training set with TRAK and D-TRAK (:class:`~genprov.attribution.data.TRAKAttributor`,
   stores under ``stores/``) and computes the scores of every query over the lambda grid
   ``{1, 2, 5} x 10^j`` (relative to ``trace(Phi^T Phi) / k``), plus TracIn / Grad-Dot, relative and
   renormalized influence, raw-pixel similarity (``-||x_q - x_i||^2``) and classifier-feature cosine.
3. LDS benchmark: trains ``n_seeds`` models on each of ``n_subsets`` random halves of the training set
   (the same recipe and number of epochs as the full model, hence half its steps), and measures every query's diffusion loss
   averaged over ``eval_draws`` fixed (timestep, noise) pairs. The model output is ``-loss`` (positive
   influence lowers the loss), averaged over seeds; LDS is the Spearman correlation across subsets of the
   subset-summed scores with it, per query.
4. lambda is chosen on a validation half of each query set (real, generated) and every reported LDS is
   measured on the other half, with bootstrap 95% intervals over queries and over subsets, paired
   differences, and the noise ceiling (the LDS one training seed's losses reach against another's).
   A study repeats TRAK and D-TRAK with other feature settings (k, K, projector, and the original's
   ``noise="batch-position"`` coupling, with the mean cosine between unrelated examples' features) and picks
   each method's setting on the validation queries.
5. Counterfactual: for a few generated test queries (never validation ones), remove each method's top-k positive influencers (or k
   random images), retrain with the same recipe and epochs, regenerate from the same noise, and measure the pixel
   l2 distance and classifier-feature cosine to the original.

Writes ``results.json``, ``report.html`` and ``lds_benchmark.npz`` (masks, losses and queries, readable by
``genprov trak lds``). The benchmark, the LDS evaluation and the counterfactual measures are library code in
:mod:`genprov.eval.lds`; this package trains the models they need.

Layout: ``config.py`` (:class:`DTRAKExperimentConfig` and its presets), ``run.py`` (:func:`run_dtrak`, registered
as ``"dtrak"``), ``results.py`` (the typed :class:`DTRAKResult`), ``report.py`` (its HTML report) and
``demo.py`` (the demo's ``"trak"`` section).
"""

from genprov.experiments.dtrak.config import DTRAKExperimentConfig
from genprov.experiments.dtrak.demo import trak_section
from genprov.experiments.dtrak.results import DTRAKResult, LDSResult, LDSRow
from genprov.experiments.dtrak.run import BENCHMARK_FILE, run_dtrak

__all__ = [
    "BENCHMARK_FILE",
    "DTRAKExperimentConfig",
    "DTRAKResult",
    "LDSResult",
    "LDSRow",
    "run_dtrak",
    "trak_section",
]
