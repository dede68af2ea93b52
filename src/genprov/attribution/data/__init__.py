"""Data attribution: which training examples shaped a model's output.

- :class:`TRAKAttributor` (:mod:`~genprov.attribution.data.trak`): TRAK and D-TRAK for diffusion models,
  with TracIn / Grad-Dot, Grad-Cos, relative and renormalized influence as scoring options.
- :data:`OUTPUT_FUNCTIONS` and :data:`PROJECTORS`: the registries TRAK is built from.
- :class:`SimilarityAttributor` (:mod:`~genprov.attribution.data.similarity`): attribution by similarity in
  a feature space (:data:`FEATURE_EXTRACTORS`, :mod:`~genprov.attribution.data.extractors`), optionally tuned
  (:class:`FeatureMapper`, :mod:`~genprov.attribution.data.mapper`), with calibrated
  soft attribution (:func:`fit_soft_calibration`).
- :class:`DataAttributor` and :class:`EnsembleAttributor`: the shared interface and score averaging.

Example:
    >>> from genprov.attribution.data import TRAKAttributor, TRAKConfig
    >>> dtrak = TRAKAttributor(ddpm, config=TRAKConfig(output_function="squared-l2-norm"))  # doctest: +SKIP
    >>> result = dtrak.fit(train_images, store="runs/dtrak").attribute(generated, k=10)  # doctest: +SKIP
"""

from genprov.attribution.data.base import DataAttributor, EnsembleAttributor, top_k, training_images
from genprov.attribution.data.extractors import (
    BACKBONES,
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    ClassifierFeaturesConfig,
    EfficientNetLite0Config,
    EfficientNetLite0Extractor,
    ExtractorConfig,
    FeatureExtractor,
    LocalWeightsConfig,
    LocalWeightsExtractor,
    PixelExtractor,
    PixelsConfig,
    RandomCNNConfig,
    RandomCNNExtractor,
    SimCLRConfig,
    SimCLRExtractor,
    build_extractor,
)
from genprov.attribution.data.mapper import FeatureMapper, TuningConfig, hub_statistics, split_classes
from genprov.attribution.data.output_functions import OUTPUT_FUNCTIONS, NoiseSchedule, OutputFunction
from genprov.attribution.data.projectors import (
    PROJECTORS,
    DenseProjectorConfig,
    Projector,
    ProjectorConfig,
    SJLTConfig,
)
from genprov.attribution.data.similarity import (
    SimilarityAttributor,
    SimilarityConfig,
    SoftCalibration,
    evaluate_soft,
    expected_calibration_error,
    fit_soft_calibration,
    remaining_influence,
    soft_attribution,
    soft_nll,
)
from genprov.attribution.data.trak import (
    DAMPING_GRID,
    SCHEDULES,
    SCORINGS,
    TRAKAttributor,
    TRAKConfig,
    method_name,
    select_parameters,
    timestep_schedule,
)

__all__ = [
    "BACKBONES",
    "DAMPING_GRID",
    "FEATURE_EXTRACTORS",
    "OUTPUT_FUNCTIONS",
    "PROJECTORS",
    "SCHEDULES",
    "SCORINGS",
    "ClassifierExtractor",
    "ClassifierFeaturesConfig",
    "DataAttributor",
    "DenseProjectorConfig",
    "EfficientNetLite0Config",
    "EfficientNetLite0Extractor",
    "EnsembleAttributor",
    "ExtractorConfig",
    "FeatureExtractor",
    "FeatureMapper",
    "LocalWeightsConfig",
    "LocalWeightsExtractor",
    "NoiseSchedule",
    "OutputFunction",
    "PixelExtractor",
    "PixelsConfig",
    "Projector",
    "ProjectorConfig",
    "RandomCNNConfig",
    "RandomCNNExtractor",
    "SJLTConfig",
    "SimCLRConfig",
    "SimCLRExtractor",
    "SimilarityAttributor",
    "SimilarityConfig",
    "SoftCalibration",
    "TRAKAttributor",
    "TRAKConfig",
    "TuningConfig",
    "build_extractor",
    "evaluate_soft",
    "expected_calibration_error",
    "fit_soft_calibration",
    "hub_statistics",
    "method_name",
    "remaining_influence",
    "select_parameters",
    "soft_attribution",
    "soft_nll",
    "split_classes",
    "timestep_schedule",
    "top_k",
    "training_images",
]
