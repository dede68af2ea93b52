"""genprov: provenance of generative models.

Three questions, one library:

1. Which model made this sample? (``genprov.attribution.model``: FLIPAD, keyed generators)
2. Which training data is it from? (``genprov.attribution.data``: TRAK / D-TRAK, feature similarity)
3. What do its explanations leak? (``genprov.privacy``: explainers, inversion attacks, GNIME)

See ``docs/architecture.md`` for the layers and how to add a method.
"""

from genprov.config import Config
from genprov.exceptions import (
    CheckpointError,
    ConfigError,
    DataError,
    GenprovError,
    MissingDependencyError,
    NotFittedError,
    StoreMismatchError,
)
from genprov.registry import Registry
from genprov.results import DataAttributionResult, ModelAttributionResult, ReconstructionResult

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataAttributionResult",
    "DataError",
    "GenprovError",
    "MissingDependencyError",
    "ModelAttributionResult",
    "NotFittedError",
    "ReconstructionResult",
    "Registry",
    "StoreMismatchError",
    "__version__",
]
