"""``genprov reproduce keyed --quick`` and the demo's keyed section, end to end (minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genprov.experiments.base import run_experiment
from genprov.experiments.keyed import KeyedResult, keyed_section
from genprov.experiments.quickstart import DemoConfig, DemoContext

pytestmark = pytest.mark.slow


def test_quick_reproduction(tmp_path: Path, file_mtimes) -> None:
    results = run_experiment("keyed", {"data": "digits", "seed": 0, "quick": True}, tmp_path)
    assert isinstance(results, KeyedResult)
    assert (tmp_path / "report.html").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["conditions"] == [
        *("clean", "blur", "crop", "noise", "jpeg", "combination", "combination-mild"),
        *("blur@absolute", "combination@absolute"),
    ]
    assert {g["family"] for g in saved["goals"]} >= {"plain", "robust-blur"} and "plain" in saved["psnr_to_root"]
    families = set(saved["metrics"])
    assert {"plain", "robust-blur", "robust-crop", "robust-noise", "robust-jpeg", "robust-combination"} <= families
    assert {"alternating", "robust-keys", "noise-margin", "compliance-margin"} <= families
    clean = results.metrics["plain"]["clean"]
    assert clean.attributability >= 0.95 and clean.distinguishability >= 0.95
    assert clean.real_attributed_none >= 0.95
    angles = saved["keys"]["angles_degrees"]
    assert abs(angles[0][1] - 90.0) < 1e-3
    # a second run reuses every cached model and family (no weights file rewritten)
    cached = file_mtimes(tmp_path, "*.safetensors")
    assert cached
    again = run_experiment("keyed", {"data": "digits", "seed": 0, "quick": True}, tmp_path)
    assert isinstance(again, KeyedResult) and again.metrics["plain"]["clean"] == clean
    assert file_mtimes(tmp_path, "*.safetensors") == cached


def test_demo_section(tmp_path: Path) -> None:
    ctx = DemoContext(DemoConfig(quick=True), tmp_path, data_root=None, show_progress=False)
    section = keyed_section(ctx)
    assert section.id == "keyed"
    assert 0.0 <= ctx.results["keyed"]["attributability"] <= 1.0
    assert len(list((tmp_path / "models" / "keyed").glob("*/config.json"))) == 1
