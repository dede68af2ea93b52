"""Single-model attribution: "was this sample made by THIS generator?".

* :class:`FinalLayerInversionAttributor` (``"flipad"``): FLIPAD (Laszkiewicz et al., ICML 2024) -- lasso
  inversion of the generator's final layer + Deep SAD.
* :class:`KeyedGenerators`: keyed user-end generators (Kim, Ren, Yang, ICLR 2021) -- one key per user
  model; :meth:`KeyedGenerators.attribute` names the user model that made an image, ``NONE`` or ``AMBIGUOUS``.
  Robust training against post-processes (:data:`POST_PROCESSES`) via :class:`PostProcessConfig`.
* Baselines on the same detector and protocol: ``"raw-pixels"``, ``"dct"``, ``"prnu"``, ``"latent-inversion"``.
* :class:`AerobladeAttributor` (``"aeroblade"``): AEROBLADE (Ricker et al., CVPR 2024) -- training-free,
  the reconstruction error of an image under a latent diffusion model's VAE.
* Building blocks: :mod:`~genprov.attribution.model.inversion` (linear operators, FISTA lasso solver),
  :mod:`~genprov.attribution.model.detectors` (Deep SAD).

Every attributor follows :class:`ModelAttributor`: ``fit(generated, negatives=...)`` sets ``threshold_`` at
``config.fnr`` on held-out own samples; ``score_samples`` (higher = more likely own), ``predict``,
``attribute``, ``save`` / ``ModelAttributor.load``.

Example:
    >>> from genprov.attribution.model import MODEL_ATTRIBUTORS
    >>> flipad = MODEL_ATTRIBUTORS.create("flipad", generator)      # doctest: +SKIP
    >>> flipad.fit(own_images, negatives=real_images).predict(x)     # doctest: +SKIP
"""

from genprov.attribution.model.aeroblade import AerobladeAttributor, AerobladeAttributorConfig
from genprov.attribution.model.base import (
    MODEL_ATTRIBUTORS,
    AttributesSamples,
    Detector,
    ModelAttributor,
    ModelAttributorConfig,
)
from genprov.attribution.model.baselines import (
    DCTAttributor,
    DCTAttributorConfig,
    LatentInversionAttributor,
    LatentInversionAttributorConfig,
    PRNUAttributor,
    PRNUAttributorConfig,
    RawPixelAttributor,
    RawPixelAttributorConfig,
)
from genprov.attribution.model.detectors import DETECTORS, DeepSAD, DeepSADConfig
from genprov.attribution.model.feature_attributor import FeatureAttributor, FeatureAttributorConfig
from genprov.attribution.model.flipad import (
    FinalLayerInversionAttributor,
    FinalLayerInversionAttributorConfig,
    autoencoder_of,
    resolve_final_layer,
)
from genprov.attribution.model.inversion import fista_lasso, lasso_objective, operator_for
from genprov.attribution.model.keyed import (
    AMBIGUOUS,
    NONE,
    KeyConstraintError,
    KeyConstraintWarning,
    KeyedAttributionResult,
    KeyedGenerators,
    KeyedGeneratorsConfig,
    attribution_rule,
    key_angles,
    key_responses,
    threshold_angles,
)
from genprov.attribution.model.keyed_postprocess import POST_PROCESSES, PostProcessConfig, apply_post_process

__all__ = [
    "AMBIGUOUS",
    "DETECTORS",
    "MODEL_ATTRIBUTORS",
    "NONE",
    "POST_PROCESSES",
    "AerobladeAttributor",
    "AerobladeAttributorConfig",
    "AttributesSamples",
    "DCTAttributor",
    "DCTAttributorConfig",
    "DeepSAD",
    "DeepSADConfig",
    "Detector",
    "FeatureAttributor",
    "FeatureAttributorConfig",
    "FinalLayerInversionAttributor",
    "FinalLayerInversionAttributorConfig",
    "KeyConstraintError",
    "KeyConstraintWarning",
    "KeyedAttributionResult",
    "KeyedGenerators",
    "KeyedGeneratorsConfig",
    "LatentInversionAttributor",
    "LatentInversionAttributorConfig",
    "ModelAttributor",
    "ModelAttributorConfig",
    "PRNUAttributor",
    "PRNUAttributorConfig",
    "PostProcessConfig",
    "RawPixelAttributor",
    "RawPixelAttributorConfig",
    "apply_post_process",
    "attribution_rule",
    "autoencoder_of",
    "fista_lasso",
    "key_angles",
    "key_responses",
    "lasso_objective",
    "operator_for",
    "resolve_final_layer",
    "threshold_angles",
]
