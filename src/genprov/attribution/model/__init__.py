"""Single-model attribution: "was this sample made by THIS generator?".

* :class:`FinalLayerInversionAttributor` (``"flipad"``): FLIPAD (Laszkiewicz et al., ICML 2024) -- lasso
  inversion of the generator's final layer + Deep SAD.
* Baselines on the same detector and protocol: ``"raw-pixels"``, ``"dct"``, ``"prnu"``, ``"latent-inversion"``.
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

from genprov.attribution.model.base import MODEL_ATTRIBUTORS, Detector, ModelAttributor, ModelAttributorConfig
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
from genprov.attribution.model.features import FeatureAttributor, FeatureAttributorConfig
from genprov.attribution.model.flipad import (
    FinalLayerInversionAttributor,
    FinalLayerInversionAttributorConfig,
    resolve_final_layer,
)
from genprov.attribution.model.inversion import fista_lasso, lasso_objective, operator_for

__all__ = [
    "DETECTORS",
    "MODEL_ATTRIBUTORS",
    "DCTAttributor",
    "DCTAttributorConfig",
    "DeepSAD",
    "DeepSADConfig",
    "Detector",
    "FeatureAttributor",
    "FeatureAttributorConfig",
    "FinalLayerInversionAttributor",
    "FinalLayerInversionAttributorConfig",
    "LatentInversionAttributor",
    "LatentInversionAttributorConfig",
    "ModelAttributor",
    "ModelAttributorConfig",
    "PRNUAttributor",
    "PRNUAttributorConfig",
    "RawPixelAttributor",
    "RawPixelAttributorConfig",
    "fista_lasso",
    "lasso_objective",
    "operator_for",
    "resolve_final_layer",
]
