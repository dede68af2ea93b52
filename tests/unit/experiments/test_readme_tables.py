"""README table renderers on hand-made results: values, formats and the cross-run Holm verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genprov.exceptions import DataError
from genprov.experiments.readme import README_TABLES, block_results, markdown_table, publish, render_readme


def _ci(mean: float) -> dict[str, float]:
    return {"mean": mean, "low": mean - 0.001, "high": mean + 0.001}


def _gnime_run(data: str, explainer: str, gains_and_p: list[tuple[float, float]]) -> dict[str, Any]:
    """A GNIME results dict whose sweep has one weight per (gain, p) pair; both attackers get the same."""
    sweep = [
        {
            "a": float(i + 1),
            "comparison": {t: {"mse_gain": _ci(g), "mse_p_value": p} for t in ("non-adaptive", "adaptive")},
        }
        for i, (g, p) in enumerate(gains_and_p)
    ]
    return {"config": {"data": data, "explainer": explainer}, "sweep": sweep}


def test_holm_across_runs_adjusts_over_every_comparison() -> None:
    runs = {"a": _gnime_run("digits", "lrp", [(0.002, 0.01)]), "b": _gnime_run("mnist", "gradient", [(-0.003, 0.0001)])}
    lines = README_TABLES["gnime-across-runs"]({"runs": runs}).splitlines()[2:]
    # four comparisons: p = .01, .01, .0001, .0001 -> Holm .02, .02, .0004, .0004
    assert [line.split(" | ")[5] for line in lines] == ["0.0200", "0.0200", "0.0004", "0.0004"]
    assert lines[0].endswith("| GNIME ahead |") and lines[2].endswith("| noise ahead |")
    weak = {"c": _gnime_run("digits", "lrp", [(0.002, 0.03)] * 3)}  # six comparisons at .03 -> Holm .18
    assert all(
        line.endswith("| no difference |")
        for line in README_TABLES["gnime-across-runs"]({"runs": weak}).splitlines()[2:]
    )


def test_markdown_table_shape() -> None:
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |\n"


def test_blocks_render_from_one_or_several_files(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    for name in ("x", "y"):
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(_gnime_run(name, "gradient", [(0.001, 0.5)])))
    assert block_results("results/x.json", tmp_path)["config"]["data"] == "x"
    assert set(block_results("results/x.json results/y.json", tmp_path)["runs"]) == {"results/x.json", "results/y.json"}
    text = "<!-- results: results/x.json results/y.json -->\n<!-- table: gnime-across-runs -->\nstale\n<!-- /table -->\n<!-- /results -->\n"
    rendered = render_readme(text, tmp_path)
    assert (
        "stale" not in rendered
        and rendered.count("| x, gradient |") == 2
        and render_readme(rendered, tmp_path) == rendered
    )
    with pytest.raises(DataError, match="does not exist"):
        render_readme(text.replace("y.json", "z.json"), tmp_path)
    with pytest.raises(DataError, match="unknown"):
        render_readme(text.replace("gnime-across-runs", "nope"), tmp_path)


def test_publish_thins_curves_only_and_records_it(tmp_path: Path) -> None:
    curve = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(500)]
    run = {"sweep": [{"a": 1.0, "gnime_history": curve, "mse": 0.123456789}], "provenance": {"command": "genprov x"}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    publish(tmp_path / "run.json", tmp_path / "pub.json", max_points=10)
    out = json.loads((tmp_path / "pub.json").read_text())
    kept = out["sweep"][0]["gnime_history"]
    assert len(kept) == 10 and kept[0]["step"] == 0 and kept[-1]["step"] == 499 and kept[1]["loss"] == 0.01786
    assert out["sweep"][0]["mse"] == 0.123456789  # measurements untouched
    assert out["provenance"]["command"] == "genprov x" and "thinned" in out["provenance"]["published"]
    (tmp_path / "bare.json").write_text(json.dumps({"sweep": []}))
    with pytest.raises(DataError, match="no provenance"):
        publish(tmp_path / "bare.json", tmp_path / "x.json")


def test_dtrak_t2i_table_puts_the_paper_beside_ours_and_takes_k100_from_the_study() -> None:
    lds = {"lds": _ci(0.2)}
    data = {
        "config": {"n_timesteps": 10},
        "paper": [
            {"timesteps": 10, "method": "TRAK", "paper_lds": 0.124, "lds_real": 0.2, "lds_generated": 0.2},
            {"timesteps": 100, "method": "D-TRAK", "paper_lds": 0.327, "lds_real": 0.3, "lds_generated": 0.4},
            {"timesteps": 100, "method": "TRAK", "paper_lds": 0.276, "lds_real": None, "lds_generated": None},
        ],
        "lds": {
            "methods": {k: {"TRAK": lds} for k in ("real", "generated")},
            "paired": {k: {"D-TRAK - TRAK": _ci(-0.05)} for k in ("real", "generated")},
        },
        "variant_study": [
            {"setting": "n_timesteps=100", "method": "D-TRAK", "LDS real": _ci(0.3), "LDS generated": _ci(0.4)},
            {"setting": "n_timesteps=100", "method": "D-TRAK - TRAK (real)", "paired difference": _ci(0.1)},
        ],
    }
    lines = README_TABLES["dtrak-t2i-paper"](data).splitlines()[2:]
    assert lines[0] == "| TRAK, K = 10 | 0.124 | .200 [.199, .201] | .200 [.199, .201] |"
    assert lines[1] == "| D-TRAK, K = 100 | 0.327 | .300 [.299, .301] | .400 [.399, .401] |"
    assert lines[2] == "| TRAK, K = 100 | 0.276 | (not run) | (not run) |"
    assert lines[3] == "| D-TRAK - TRAK (real, K = 10) |  | -.050 [-.051, -.049] |  |"
    assert lines[4].endswith("|  | -.050 [-.051, -.049] |")
