"""Reproduce FLIPAD's single-model attribution tables at small scale (``genprov reproduce flipad``).

Laszkiewicz et al., "Single-Model Attribution of Generative Models Through Final-Layer Inversion",
ICML 2024, Sec. 5. Small-scale analogues of:

* **Table 1**: DCGAN, WGAN-GP, LSGAN and EBGAN trained on the dataset (digits resized to 16x16, or
  MNIST / Fashion-MNIST at 28x28); each in turn is the owner's model, tested against real test images
  and the other three.
* **Table 2**: the same detectors tested against the owner's architecture trained with other seeds.
* **Table 3**: every split perturbed (Gaussian noise with sigma 5% and 10% of the value range, Gaussian
  blur at the original's relative strength and at 1 px, centre crops of about 94% and 86% resized
  back, JPEG quality 90 and 80).
* **Table 5**: MLP GANs on scikit-learn's bundled tabular data (wine, breast cancer, ...).
* Table 4 (Stable Diffusion) needs downloaded weights; the VAE-decoder path is unit-tested and the report
  says how to run it.

Protocol (as the paper's code): the owner fits each method on ``n_train`` of its own samples (label +1)
and ``n_train`` real training images (label -1); the threshold is set at 0.5% FNR on ``n_holdout`` held-out
own samples; the test sets are balanced (``n_test`` own samples vs ``n_test`` of one other source), the
metrics are accuracy at that threshold and AUC, averaged over ``n_resamples`` random resamples of every
split. Every image passes an 8-bit PNG round trip (after any perturbation) before features are computed.
The inversion-based baseline (latent inversion) runs on one resample with ``latent_inversion_n_test``
samples per source, as the paper runs its inversion baselines once.

Choices (FLIPAD's saturation handling, FISTA's start, alpha, iteration budget, normalisation, detector
capacity) are studied on a validation split only: the owner DCGAN's samples drawn under their own seed key
(none is a Table 1 sample) against real images held out of the GANs' training (``val_reals``; the earlier
protocol took them from the GANs' training images) and a GAN trained with a seed used nowhere else; the
best setting by mean validation AUC is then used for every table. Table 3's ``blur-paper`` is the
original's blur at its strength relative to the image size (0.2 px at 16 px), beside the harsher 1 px
``blur``. Trained models are cached in ``out_dir/models``.

Layout: ``config.py`` (:class:`FlipadExperimentConfig` and its presets), ``run.py`` (:func:`run_flipad`, registered
as ``"flipad"``, and the Python shortcut :func:`reproduce_flipad`), ``results.py`` (the typed
:class:`FlipadResult`), ``report.py`` (its HTML report) and ``demo.py`` (the demo's ``"flipad"`` section).
"""

from genprov.experiments.flipad.config import DATA_SIZES, METHODS, FlipadExperimentConfig
from genprov.experiments.flipad.demo import flipad_demo_section
from genprov.experiments.flipad.results import FlipadResult, StudyRow
from genprov.experiments.flipad.run import reproduce_flipad, run_flipad

__all__ = [
    "DATA_SIZES",
    "METHODS",
    "FlipadExperimentConfig",
    "FlipadResult",
    "StudyRow",
    "flipad_demo_section",
    "reproduce_flipad",
    "run_flipad",
]
