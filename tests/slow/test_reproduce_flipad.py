"""``genprov reproduce flipad --quick`` end to end (a few minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genprov.experiments import run_experiment
from genprov.experiments.flipad import METHODS, FlipadResult

pytestmark = pytest.mark.slow


def test_quick_reproduction_writes_results_and_report(tmp_path: Path, file_mtimes) -> None:
    results = run_experiment("flipad", {"data": "digits", "seed": 0, "quick": True}, tmp_path, show_progress=False)
    assert (tmp_path / "report.html").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved.pop("provenance")["command"] == "genprov reproduce flipad --data digits --seed 0 --quick"
    assert isinstance(results, FlipadResult) and results.to_dict() == saved
    assert set(saved["table1"]) == {"dcgan", "wgan-gp", "lsgan", "ebgan"}
    for owner in saved["table1"].values():
        assert set(owner) == set(METHODS)
        for per_source in owner.values():
            for metrics in per_source.values():
                assert 0.0 <= metrics["auc"] <= 1.0
                assert 0.0 <= metrics["acc"] <= 1.0
    assert saved["table2"]["dcgan"]["flipad"]
    assert set(saved["table3"]) == {"noise-0.1", "jpeg-80"}
    assert set(saved["table5"]["wine"]) == {"wgan-gp", "dcgan"}
    assert any(row.chosen for row in results.study)
    # FLIPAD separates the owner's samples from real digits
    assert results.table1["dcgan"]["flipad"].per_source["real"].auc > 0.9
    # a second run reuses the cached models (no weights file rewritten) and measures the same numbers
    models = file_mtimes(tmp_path / "models", "*.safetensors")
    assert models
    again = run_experiment("flipad", {"data": "digits", "seed": 0, "quick": True}, tmp_path, show_progress=False)
    assert file_mtimes(tmp_path / "models", "*.safetensors") == models
    assert isinstance(again, FlipadResult) and again.table1 == results.table1
