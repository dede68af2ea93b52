"""``genprov trak featurize / score / lds`` end to end on a tiny DDPM trained for a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from genprov.cli.trak import app
from genprov.data import load_dataset, save_images
from genprov.eval.lds import LDSBenchmark
from genprov.models.diffusion import DDPMConfig
from genprov.models.training import default_train_config, train_ddpm
from genprov.results import DataAttributionResult
from genprov.storage import read_manifest
from genprov.utils.seeding import numpy_rng

FAST = ["--n-timesteps", "2", "--proj-dim", "64", "--n", "12"]


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddpm")
    cfg = DDPMConfig.preset("tiny")
    train_ddpm(cfg, default_train_config(cfg, n_steps=3, batch_size=8), load_dataset("digits", n=40), folder)
    return folder


@pytest.fixture(scope="module")
def store(ddpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("store") / "dtrak"
    args = ["featurize", "--model", str(ddpm), "--data", "digits", "--store", str(folder), *FAST]
    result = CliRunner().invoke(app, [*args, "--output-function", "squared-l2-norm", "--set", "shard_size=5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "d-trak" and summary["n_train"] == 12 and summary["shards"] == 3
    return folder


def test_help_shows_examples() -> None:
    for command in ("featurize", "score", "lds"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: genprov trak" in result.stdout


def test_featurize_resumes_and_refuses_another_config(ddpm: Path, store: Path) -> None:
    manifest = read_manifest(store)
    assert manifest.shards == ["done"] * 3 and manifest.info["trak_config"]["output_function"] == "squared-l2-norm"
    args = [
        "featurize",
        "--model",
        str(ddpm),
        "--data",
        "digits",
        "--store",
        str(store),
        *FAST,
        "--set",
        "shard_size=5",
    ]
    again = CliRunner().invoke(app, [*args, "--output-function", "squared-l2-norm", "--json"])
    assert again.exit_code == 0, again.output
    bad = CliRunner().invoke(app, [*args, "--output-function", "loss"])
    assert bad.exit_code == 2
    assert "config.output_function" in bad.output and "'squared-l2-norm'" in bad.output
    assert read_manifest(store).shards == ["done"] * 3  # the earlier store is intact


def test_score_writes_json_npz_and_gallery(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "queries"
    save_images(load_dataset("digits", split="test", n=2).images, folder)
    out = tmp_path / "why"
    args = ["score", "--store", str(store), "--queries", str(folder), "--queries", "digits", "--n-queries", "1"]
    result = CliRunner().invoke(app, [*args, "--top-k", "4", "--out", str(out), "--save-scores", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "d-trak" and len(summary["queries"]) == 3
    top = summary["queries"][0]["top"]
    assert len(top) == 4 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    saved = DataAttributionResult.load(out / "attribution.npz")
    assert saved.indices.shape == (3, 4)
    assert np.load(out / "scores.npy").shape == (3, 12)
    assert (out / "report.html").is_file() and "Most positive" in (out / "report.html").read_text()


def test_lds_against_a_benchmark(store: Path, tmp_path: Path) -> None:
    rng = numpy_rng(0, "cli-lds")
    queries = load_dataset("digits", split="test", n=6).images.numpy()
    masks = rng.random((5, 12)) < 0.5
    bench = LDSBenchmark(masks, rng.random((5, 2, 6)), queries, np.array(["real"] * 6), np.zeros(6, dtype=bool))
    bench.save(tmp_path / "bench.npz")
    out = tmp_path / "lds"
    args = ["lds", "--store", str(store), "--benchmark", str(tmp_path / "bench.npz"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--n-boot", "50", "--json"])
    assert result.exit_code == 0, result.output
    lds = json.loads(result.stdout)["lds"]
    assert set(lds["methods"]["real"]) == {"D-TRAK", "pixel similarity"}
    assert -1 <= lds["methods"]["real"]["D-TRAK"]["lds"]["mean"] <= 1
    assert lds["noise_ceiling"]["real"] is not None
    assert (out / "report.html").is_file()


def test_bad_inputs_get_clear_errors(ddpm: Path, store: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        app, ["score", "--store", str(tmp_path / "none"), "--queries", "digits", "--out", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "not a genprov store" in missing.output
    wrong = CliRunner().invoke(
        app, ["lds", "--store", str(store), "--benchmark", str(tmp_path / "x.npz"), "--out", str(tmp_path)]
    )
    assert wrong.exit_code == 2 and "does not exist" in wrong.output
    bad_set = CliRunner().invoke(
        app, ["featurize", "--model", str(ddpm), "--data", "digits", "--store", str(tmp_path / "s"), "--set", "lamda=1"]
    )
    assert bad_set.exit_code == 2 and "lamda" in bad_set.output
