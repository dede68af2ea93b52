"""Paper reproductions at small scale and the demo (``genprov.experiments.quickstart``).

Importing this package registers every experiment in :data:`EXPERIMENTS` and every demo section in
``genprov.experiments.quickstart.DEMO_SECTIONS``.
"""

from genprov.experiments import (
    flipad,
    quickstart,
)
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, run_experiment

__all__ = ["EXPERIMENTS", "ExperimentConfig", "flipad", "quickstart", "run_experiment"]
