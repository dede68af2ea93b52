"""``genprov reproduce similarity`` on digits (full run, ~20-25 min on 2 cores) and the demo's similarity section.

The full run's claims are checked loosely: every extractor ranks the exemplars far above chance on
unseen-class queries, the negative control (samples of the un-customized model) stays near chance, and
customization matters without copying. Set ``GENPROV_SIMILARITY_OUT`` to a folder to reuse (resume) a run
there instead of starting one in a temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from genprov.experiments.base import run_experiment
from genprov.experiments.quickstart import DemoConfig, run_demo
from genprov.experiments.similarity import SimilarityResult  # registers the experiment and demo section

pytestmark = pytest.mark.slow


def test_full_digits_reproduction_supports_the_claims(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = Path(os.environ.get("GENPROV_SIMILARITY_OUT", str(tmp_path)))
    result = run_experiment("similarity", {"data": "digits", "seed": 0}, out, show_progress=False)
    assert isinstance(result, SimilarityResult)
    saved = json.loads((out / "results.json").read_text())
    assert saved.pop("provenance")["command"] == "genprov reproduce similarity --data digits --seed 0"
    assert saved == result.to_dict()
    assert saved["experiment"] == "similarity" and saved["config"]["quick"] is False
    strength = result.influence_strength
    assert strength.exemplar_nn_rate > 0.2  # customization matters ...
    assert strength.near_copy_rate < 0.25  # ... without copying
    claims = result.claims
    chance = claims.chance_map
    for name, per in claims.per_extractor.items():
        assert per.untuned_map > 2 * chance, name  # every method well above chance
        assert per.tuned_map > 2 * chance, name
        assert per.control_map < 4 * chance, name  # the control stays near chance
    assert {"pixels", "classifier", "simclr", "random-cnn"} <= set(claims.per_extractor)
    assert "Top-k with soft shares" in (out / "report.html").read_text()


def test_demo_similarity_section(tmp_path: Path) -> None:
    config = DemoConfig(quick=True, sections=("similarity",), n_samples=16)
    results = run_demo(config, tmp_path, show_progress=False)
    section = results["sections"]["similarity"]
    assert {r["features"] for r in section["ranks"]} == {"pixels", "classifier"}
    assert "Which training image is this generation built on?" in (tmp_path / "index.html").read_text()
