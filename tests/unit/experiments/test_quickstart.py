from __future__ import annotations

import json

import pytest

from genprov.exceptions import ConfigError
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoConfig, run_demo
from genprov.report import Section

TINY = DemoConfig(
    image_size=8,
    ddpm_image_size=8,
    ddpm_preset="tiny",
    gan_steps=20,
    ddpm_steps=20,
    classifier_steps=20,
    n_samples=24,
    sections=("data", "models"),
)


def test_demo_writes_report_and_reuses_cached_models(tmp_path) -> None:
    results = run_demo(TINY, tmp_path, show_progress=False)
    index = tmp_path / "index.html"
    assert index.is_file() and (tmp_path / "results.json").is_file()
    html = index.read_text(encoding="utf-8")
    assert "Generators and a classifier" in html and "The data" in html
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["sections"]["models"]["frechet_distance"] == results["sections"]["models"]["frechet_distance"]
    for name in ("dcgan", "ddpm", "classifier"):
        assert (tmp_path / "models" / name / "model.safetensors").is_file()
    first = (tmp_path / "models" / "dcgan" / "model.safetensors").stat().st_mtime_ns

    again = run_demo(TINY, tmp_path, show_progress=False)
    assert (tmp_path / "models" / "dcgan" / "model.safetensors").stat().st_mtime_ns == first  # reused, not retrained
    assert again["sections"]["models"]["frechet_distance"] == results["sections"]["models"]["frechet_distance"]


def test_unknown_section_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'models'"):
        run_demo(TINY.replace(sections=("modles",)), tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_sections_are_pluggable(tmp_path, monkeypatch) -> None:
    name = "zz-test-extra"

    def extra(ctx: object) -> Section:
        return Section("extra", "An extra section", intro="added by a test")

    monkeypatch.setitem(DEMO_SECTIONS._entries, name, DEMO_SECTIONS._entries["data"].__class__(name, extra, None))
    run_demo(TINY.replace(sections=("data", name)), tmp_path, show_progress=False)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert html.index("The data") < html.index("An extra section")


def test_demo_config_validates() -> None:
    with pytest.raises(ConfigError, match="image_size must be one of"):
        DemoConfig(image_size=12)
    assert DemoConfig(quick=True).steps("gan") == 100
