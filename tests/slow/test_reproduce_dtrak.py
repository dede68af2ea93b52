"""``genprov reproduce dtrak --quick`` and the demo's TRAK section end to end (slow: trains ~25 small DDPMs)."""

from __future__ import annotations

import json

import pytest

from genprov.experiments.base import run_experiment
from genprov.experiments.dtrak import DTRAKResult  # registers the "dtrak" experiment and the "trak" demo section
from genprov.experiments.quickstart import DemoConfig, run_demo

pytestmark = pytest.mark.slow


def test_quick_reproduction_writes_results_and_report(tmp_path, file_mtimes) -> None:
    result = run_experiment("dtrak", {"data": "digits", "seed": 0, "quick": True}, tmp_path, show_progress=False)
    assert isinstance(result, DTRAKResult)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved.pop("provenance")["command"] == "genprov reproduce dtrak --data digits --seed 0 --quick"
    assert saved == result.to_dict()
    assert saved["experiment"] == "dtrak" and saved["config"]["quick"] is True
    html = (tmp_path / "report.html").read_text()
    for heading in ("Linear datamodeling score", "Top influencers", "Counterfactual retraining", "noise ceiling"):
        assert heading in html
    for kind in ("real", "generated"):
        methods = result.lds.methods[kind]
        assert {"TRAK", "D-TRAK", "TracIn / Grad-Dot", "pixel similarity", "feature similarity"} <= set(methods)
        for row in methods.values():
            assert -1 <= row.lds.mean <= 1 and row.lds.low <= row.lds.high
        assert methods["D-TRAK"].relative_damping is not None
        assert "D-TRAK - TRAK" in result.lds.paired[kind]
    assert set(result.counterfactual.methods) == {"TRAK", "D-TRAK", "random"}
    assert (tmp_path / "lds_benchmark.npz").is_file()
    models = file_mtimes(tmp_path / "models")
    assert any(name.endswith(".safetensors") for name in models)
    again = run_experiment("dtrak", {"data": "digits", "seed": 0, "quick": True}, tmp_path, show_progress=False)
    assert file_mtimes(tmp_path / "models") == models  # no model retrained, no loss re-measured
    assert isinstance(again, DTRAKResult)
    assert again.lds == result.lds  # every model and store is reused; the numbers are identical


def test_demo_trak_section(tmp_path) -> None:
    config = DemoConfig(quick=True, sections=("trak",), n_samples=16)
    results = run_demo(config, tmp_path, show_progress=False)
    trak = results["sections"]["trak"]
    assert trak["n_train"] == 300 and len(trak["sample 0"]["D-TRAK"]) == 5
    assert "Which training images shaped a generated digit?" in (tmp_path / "index.html").read_text()
