"""Paper reproductions at small scale and the demo (``genprov.experiments.quickstart``).

Importing this package registers every experiment in :data:`EXPERIMENTS`.
"""

from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, run_experiment

__all__ = ["EXPERIMENTS", "ExperimentConfig", "run_experiment"]
