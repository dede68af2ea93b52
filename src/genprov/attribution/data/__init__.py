"""Data attribution: which training examples shaped a model's output.

- :class:`TRAKAttributor` (:mod:`~genprov.attribution.data.trak`): TRAK and D-TRAK for diffusion models,
  with TracIn / Grad-Dot, Grad-Cos, relative and renormalized influence as scoring options.
- :data:`OUTPUT_FUNCTIONS` and :data:`PROJECTORS`: the registries TRAK is built from.
- :class:`DataAttributor` and :class:`EnsembleAttributor`: the shared interface and score averaging.

Example:
    >>> from genprov.attribution.data import TRAKAttributor, TRAKConfig
    >>> dtrak = TRAKAttributor(ddpm, config=TRAKConfig(output_function="squared-l2-norm"))  # doctest: +SKIP
    >>> result = dtrak.fit(train_images, store="runs/dtrak").attribute(generated, k=10)  # doctest: +SKIP
"""

from genprov.attribution.data.base import DataAttributor, EnsembleAttributor, top_k, training_images
from genprov.attribution.data.output_functions import OUTPUT_FUNCTIONS, NoiseSchedule, OutputFunction
from genprov.attribution.data.projectors import (
    PROJECTORS,
    DenseProjectorConfig,
    Projector,
    ProjectorConfig,
    SJLTConfig,
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
    "DAMPING_GRID",
    "OUTPUT_FUNCTIONS",
    "PROJECTORS",
    "SCHEDULES",
    "SCORINGS",
    "DataAttributor",
    "DenseProjectorConfig",
    "EnsembleAttributor",
    "NoiseSchedule",
    "OutputFunction",
    "Projector",
    "ProjectorConfig",
    "SJLTConfig",
    "TRAKAttributor",
    "TRAKConfig",
    "method_name",
    "select_parameters",
    "timestep_schedule",
    "top_k",
    "training_images",
]
