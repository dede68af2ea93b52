"""Paper reproductions at small scale and the demo (``genprov.experiments.quickstart``).

Importing this package registers every experiment in :data:`EXPERIMENTS` and every demo section in
``genprov.experiments.quickstart.DEMO_SECTIONS``.
"""

from genprov.experiments import dtrak, flipad, gnime, keyed, quickstart, similarity
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, run_experiment

quickstart.DEMO_SECTIONS.register("keyed")(keyed.keyed_section)
quickstart.DEMO_SECTIONS.register("similarity")(similarity.similarity_section)

__all__ = [
    "EXPERIMENTS",
    "ExperimentConfig",
    "dtrak",
    "flipad",
    "gnime",
    "keyed",
    "quickstart",
    "run_experiment",
    "similarity",
]
