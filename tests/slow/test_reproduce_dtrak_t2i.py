"""``genprov reproduce dtrak-t2i --quick`` end to end with a resumed re-run, and the demo's ``t2i`` section (slow:
trains a tiny text-to-image pipeline and nine LoRAs)."""

from __future__ import annotations

import json

import pytest

from genprov.experiments.base import run_experiment
from genprov.experiments.dtrak_t2i import DTRAKT2IResult  # registers "dtrak-t2i" and the "t2i" demo section
from genprov.experiments.quickstart import DemoConfig, run_demo

pytestmark = pytest.mark.slow


def test_quick_reproduction_resumes_from_its_caches(tmp_path, file_mtimes) -> None:
    config = {"data": "digits", "seed": 0, "quick": True}
    result = run_experiment("dtrak-t2i", config, tmp_path, show_progress=False)
    assert isinstance(result, DTRAKT2IResult)
    saved = json.loads((tmp_path / "results.json").read_text())
    saved.pop("provenance")
    assert saved == result.to_dict()
    for kind in ("real", "generated"):
        assert {"TRAK", "D-TRAK", "pixel similarity", "latent similarity"} <= set(result.lds.methods[kind])
    cached = {name: file_mtimes(tmp_path / name) for name in ("base", "lora", "losses", "stores")}
    assert any(name.endswith(".safetensors") for name in cached["lora"])
    again = run_experiment("dtrak-t2i", config, tmp_path, show_progress=False)
    assert {name: file_mtimes(tmp_path / name) for name in cached} == cached  # nothing retrained or re-measured
    assert isinstance(again, DTRAKT2IResult) and again.lds == result.lds


def test_demo_t2i_section(tmp_path) -> None:
    results = run_demo(DemoConfig(quick=True, sections=("t2i",)), tmp_path, show_progress=False)
    t2i = results["sections"]["t2i"]
    assert t2i["prompts"] == ["a handwritten zero", "a handwritten one"]
    assert [len(top) for top in t2i["top5"].values()] == [5, 5]
    assert "which training images shaped its samples?" in (tmp_path / "index.html").read_text()
