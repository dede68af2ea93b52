"""Explanation privacy at small scale (``genprov reproduce gnime``): Jeong et al., "Learning to Generate
Inversion-Resistant Model Explanations" (GNIME), NeurIPS 2022, Sec. 5 (Tables 1-2 and Fig. 3 in spirit).

Protocol (what differs from the paper is marked *genprov*):

1. **Data and splits.** The pooled dataset (digits: all 1,797 images at 8x8; MNIST: a seeded subset at
   28x28; Olivetti: 40 identities x 10 faces, resized to ``image_size``) is split by
   :func:`~genprov.privacy.privacy_splits` into the defender's half, the attacker's part (80% training,
   20% early stopping) and a held-out **test** split that gives every reported figure (*genprov*: the
   original reported on the attacker's early-stopping split). Splits are stratified by class; for
   Olivetti that is a per-identity split, 5 / 3 / 1 / 1 images of every person.
2. **Classifiers.** The victim CNN and a separate evaluation CNN (another seed and width) are trained on
   the defender's half; the evaluation classifier's accuracy on reconstructions is the TCA (for faces:
   identity leakage). Both are cached in ``out/models``.
3. **Attacks.** ExpMI (U-Net decoder from explanation + prediction vector) and PredMI (prediction vector
   only) are trained on the attacker's observations with MSE and early stopping.
4. **Defenses.** GNIME as the original builds it (``defense_variant="unet"``: an ExpMI U-Net reading the
   standardised map and the victim's logits, distortion in standardised units, maps clipped to [0, 1],
   simultaneous updates against a linear surrogate inverter; ``"residual"`` keeps genprov's earlier
   variant, ``ablation=true`` runs both) at every weight ``a`` of the sweep, trained on the defender's half
   (*genprov*: 1,600 steps at lr 1e-3 instead of the original's ~17,000 at 1e-4), and for each one the RND
   whose Gaussian noise has the same distortion, measured on the defender's half (equal utility cost).
5. **Threat models**, both reported: *non-adaptive* (the ExpMI trained on clean explanations meets the
   defended ones) and *adaptive* (a fresh ExpMI trained on defended explanations: the paper's setting).
6. **Metrics** on the test split, with 95% percentile-bootstrap intervals over test images: MSE, PSNR, SSIM
   on images in [0, 1] (the paper's range), TCA, victim re-classification accuracy, feature similarity,
   and the explanation distortion (MSE of defended vs clean maps) and top-10% pixel overlap. At every
   sweep point GNIME and its matched RND are compared with paired-bootstrap intervals over the same test
   images; PredMI is the floor no explanation defense can push the attacker below while predictions are
   released unaltered. A win of GNIME over RND needs its paired sign-flip p-value, Holm-adjusted over
   every sweep point and threat model, below 0.05.

Everything derives from ``seed``; nothing is selected on test numbers. Trained attacks and defenses are
cached in ``out/cache`` (keyed by their settings), so a second run only re-evaluates. ``results.json`` holds
every number; ``report.html`` shows the paper-shaped tables, the privacy-utility curves, the sweep table
with the paired comparisons, and a grid of originals, explanations, defended explanations and
reconstructions.

Layout: ``config.py`` (:class:`GNIMEExperimentConfig` and its presets), ``run.py`` (:func:`run_gnime`, registered
as ``"gnime"``), ``results.py`` (the typed :class:`GNIMEResult`), ``report.py`` (its HTML report) and
``demo.py`` (the demo's ``"privacy"`` section).
"""

from genprov.experiments.gnime.config import DATASETS, EXPERIMENT_EXPLAINERS, GNIMEExperimentConfig, classifier_config
from genprov.experiments.gnime.demo import privacy_section
from genprov.experiments.gnime.results import AttackRow, GNIMEResult
from genprov.experiments.gnime.run import run_gnime

__all__ = [
    "DATASETS",
    "EXPERIMENT_EXPLAINERS",
    "AttackRow",
    "GNIMEExperimentConfig",
    "GNIMEResult",
    "classifier_config",
    "privacy_section",
    "run_gnime",
]
