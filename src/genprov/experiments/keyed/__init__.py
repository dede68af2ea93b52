"""Keyed generators at small scale (``genprov reproduce keyed``): Kim, Ren & Yang, "Decentralized
Attribution of Generative Models", ICLR 2021, Sec. 5 (Tables 1-3 in spirit).

Protocol:

1. A root DCGAN ``G0`` is trained on the dataset (digits resized to 16x16, or MNIST / Fashion-MNIST at
   28x28) and a CNN classifier whose penultimate layer is the feature space of the Fréchet distance
   (genprov ships no Inception weights); both are cached in ``out/models``.
2. A **plain** family of ``n_keys`` keys and user models is trained with the paper's procedure
   (:class:`~genprov.attribution.model.keyed.KeyedGenerators`; first key alternately with its user model,
   further keys on compliance and orthogonality, user models fine-tuned with ``alpha = 10``).
3. For every post-process ``T`` (blur, crop, noise, JPEG, combination) a **robust** family starts from the
   plain one (same keys) and fine-tunes each user model with ``T`` applied to ``G_i(z)`` and ``G0(z)`` on half
   the batches (paper Sec. 5).
4. Ablations (``variants``), each reported beside the paper's numbers, never replacing them:
   ``alternating`` (every key trained alternately with its user model, not only the first),
   ``robust-keys`` (keys and user models trained alternately with every post-process from the start, so
   that keys survive them), ``noise-margin`` (robust noise training with the margin raised by
   ``3 * sigma_max`` in image-space distance: the noise's own 3-sigma reach, derived, not tuned),
   ``compliance-margin`` (a plain family whose keys keep authentic and ``G0`` samples ``3 * sigma_max``
   inside their positive side in image-space distance, so that noise cannot flip *other* keys).
5. **Metrics** on ``n_eval`` samples per user model drawn with an evaluation seed used nowhere in
   training, each passed through the test post-process and saved as 8-bit PNG (``png_roundtrip``):
   distinguishability ``D_i = 1/2 [P_real(phi_i^T x > 0) + P_{G_i}(phi_i^T x < 0)]`` on held-out authentic
   test images, attributability (``genprov.eval.attributability``: claimed by its own key and no other),
   the fraction of authentic images attributed to nobody, ``E||G_i(z) - G0(z)||``, PSNR / SSIM to ``G0`` at
   the same ``z``, and the Fréchet distance to the authentic test images next to ``G0``'s. Test strengths
   (config): blur sigma 3 (9-tap kernel), centre crop 0.8, noise sigma 0.3, real JPEG (Pillow, quality 80),
   and their combination at mid strength (blur 1, crop 0.9, noise 0.1, JPEG 80).

Everything is computed from fixed seeds; nothing is selected on the evaluation numbers. ``results.json``
holds every number; ``report.html`` shows them with the key angle matrix, the data-dependent angle
thresholds and sample grids of ``G0`` against each ``G_i`` at the same latents.

Layout: ``config.py`` (:class:`KeyedExperimentConfig` and its presets), ``run.py`` (:func:`run_keyed`, registered
as ``"keyed"``, and the metrics :func:`evaluate_family` / :func:`apply_test_condition`), ``results.py`` (the
typed :class:`KeyedResult`), ``report.py`` (its HTML report) and ``demo.py`` (the demo's ``"keyed"`` section).
"""

from genprov.experiments.keyed.config import DATA_SIZES, VARIANTS, KeyedExperimentConfig
from genprov.experiments.keyed.demo import keyed_section
from genprov.experiments.keyed.results import ConditionEvaluation, ConditionMetrics, KeyedResult, KeyInfo, UserMetrics
from genprov.experiments.keyed.run import apply_test_condition, evaluate_family, run_keyed

__all__ = [
    "DATA_SIZES",
    "VARIANTS",
    "ConditionEvaluation",
    "ConditionMetrics",
    "KeyInfo",
    "KeyedExperimentConfig",
    "KeyedResult",
    "UserMetrics",
    "apply_test_condition",
    "evaluate_family",
    "keyed_section",
    "run_keyed",
]
