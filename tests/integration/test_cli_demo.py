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
    result = runner.invoke(app, ["reproduce", "gnime", "--explainer", "saliency", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "explainer" in result.output and "grad-cam" in result.output
    result = runner.invoke(app, ["reproduce", "keyed", "--explainer", "lrp", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no parameter 'explainer'" in result.output


def test_quick_demo_builds_a_servable_workspace(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from genprov.app.server import create_app

    out = tmp_path / "report"
    result = runner.invoke(app, ["demo", "--quick", "--only", "flipad,keyed,trak", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    kinds = {item["name"]: item["kind"] for item in payload["servable"]}
    assert kinds == {"demo-dcgan": "flipad", "demo-users": "keyed", "demo-trak": "trak", "demo-d-trak": "trak"}
    client = TestClient(create_app(payload["workspace"]))
    assert client.get("/health").json()["entries"] == 4
    examples = [e["name"] for e in client.get("/api/examples").json()]
    assert "demo-dcgan-sample_00000" in examples and "real-digit_00000" in examples
    answer = client.post("/api/attribute/example/demo-users-user-0-sample_00000").json()
    by_name = {a["name"]: a for a in answer["entries"]}
    assert set(by_name) == set(kinds) and all("error" not in a for a in answer["entries"])
    assert len(by_name["demo-d-trak"]["positive"]) == 8
