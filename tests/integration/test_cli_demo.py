from __future__ import annotations

import json

from typer.testing import CliRunner

from genprov.cli.main import app

runner = CliRunner()


def test_root_help_lists_every_group() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "train", "sample", "demo", "reproduce"):
        assert group in result.output


def test_demo_data_section_json_and_bad_section_keeps_report(tmp_path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["demo", "--only", "data", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sections"]["data"]["training images"] == 1437
    before = (out / "index.html").read_bytes()

    bad = runner.invoke(app, ["demo", "--only", "modles", "--out", str(out)])
    assert bad.exit_code == 2
    assert "Did you mean 'models'" in bad.output
    assert (out / "index.html").read_bytes() == before


def test_reproduce_unknown_experiment_and_bad_set(tmp_path) -> None:
    result = runner.invoke(app, ["reproduce", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Unknown experiment 'nope'" in result.output
    result = runner.invoke(app, ["reproduce", "nope", "--set", "novalue", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
