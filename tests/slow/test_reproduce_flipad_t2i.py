"""``genprov reproduce flipad-t2i --quick`` end to end (about a minute on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genprov.experiments import run_experiment
from genprov.experiments.flipad_t2i import METHODS, FlipadT2IResult

pytestmark = pytest.mark.slow


def test_quick_reproduction_writes_results_and_report_and_reuses_its_pipelines(tmp_path: Path, file_mtimes) -> None:
    config = {"data": "digits", "seed": 0, "quick": True}
    result = run_experiment("flipad-t2i", config, tmp_path, show_progress=False)
    assert (tmp_path / "report.html").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved.pop("provenance")["command"] == "genprov reproduce flipad-t2i --data digits --seed 0 --quick"
    assert isinstance(result, FlipadT2IResult) and result.to_dict() == saved
    assert set(result.table4) == {*METHODS, "aeroblade-l2"}
    for summary in (*result.table4.values(), *result.shared_vae.values()):
        assert 0.0 <= summary.mean.auc <= 1.0 and 0.0 <= summary.mean.acc <= 1.0
    weights = file_mtimes(tmp_path / "pipelines", "*.safetensors")
    assert weights
    again = run_experiment("flipad-t2i", config, tmp_path, show_progress=False)
    assert file_mtimes(tmp_path / "pipelines", "*.safetensors") == weights
    assert isinstance(again, FlipadT2IResult) and again.table4 == result.table4
