"""Paper reproductions at small scale and the demo (``genprov.experiments.quickstart``).

Importing this package registers every experiment in :data:`EXPERIMENTS` and every demo section in
``genprov.experiments.quickstart.DEMO_SECTIONS``. A reproduction is a package ``experiments/<name>/``:
``config.py`` (its :class:`ExperimentConfig` subclass and presets), ``run.py`` (the runner registered with
``@EXPERIMENTS.register``, returning a frozen :class:`ExperimentResult` whose ``to_dict()`` is
``results.json``), ``results.py`` (the result and its row dataclasses), ``report.py`` (the HTML report built
from the result) and ``demo.py`` (its demo section, registered with ``@DEMO_SECTIONS.register``).
"""

from genprov.experiments import (
    dtrak,
    dtrak_t2i,
    flipad,
    flipad_t2i,
    gnime,
    keyed,
    quickstart,
    similarity,
    similarity_t2i,
)
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, ExperimentResult, run_experiment

__all__ = [
    "EXPERIMENTS",
    "ExperimentConfig",
    "ExperimentResult",
    "dtrak",
    "dtrak_t2i",
    "flipad",
    "flipad_t2i",
    "gnime",
    "keyed",
    "quickstart",
    "run_experiment",
    "similarity",
    "similarity_t2i",
]
