"""``genprov similarity index / tune / query`` end to end on tiny data, and the errors bad queries get."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genprov.cli.similarity import app
from genprov.data import load_dataset, save_images
from genprov.experiments.similarity import CustomizationConfig, build_customizations
from genprov.models.classifiers import ClassifierConfig
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.training import default_train_config, train_classifier
from genprov.results import DataAttributionResult

torch.set_num_threads(1)

INDEX = ["index", "--data", "digits", "--n", "30", "--set", "similarity.shard_size=8"]


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sim") / "pixels"
    result = CliRunner().invoke(app, [*INDEX, "--extractor", "pixels", "--store", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_train"] == 30 and summary["feature_dim"] == 64 and summary["method"] == "similarity[pixels]"
    return folder


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("queries")
    return save_images(load_dataset("digits", split="test", n=2).images, folder)


def test_help_shows_examples() -> None:
    for command in ("index", "tune", "query"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: genprov similarity" in result.stdout


def test_index_records_how_to_rebuild(store: Path) -> None:
    record = json.loads((store / "config.json").read_text())
    assert record["format"] == "genprov-artifact" and record["kind"] == "similarity-index"
    info = record["state"]
    assert info["extractor"]["name"] == "pixels" and info["image_shape"] == [1, 8, 8]
    assert info["data"] == {"name": "digits", "split": "train", "n": 30, "seed": 0, "resize": None, "data_root": None}
    assert info["extractor"]["config"]["normalize"] is True and record["config"]["shard_size"] == 8
    assert info["data_fingerprint"] and info["spec"]["extractor"]["extractor"] == "pixels"
    # the same command again reuses the finished index
    again = CliRunner().invoke(app, [*INDEX, "--extractor", "pixels", "--store", str(store), "--json"])
    assert again.exit_code == 0, again.output
    other = CliRunner().invoke(app, [*INDEX, "--extractor", "random-cnn", "--store", str(store)])
    assert other.exit_code == 2 and "other settings" in other.output


def test_query_writes_json_npz_and_galleries(store: Path, queries: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "why"
    args = ["query", "--store", str(store), *map(str, queries), "--top-k", "5", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_train"] == 30 and len(summary["queries"]) == 2
    for row in summary["queries"]:
        shares = [t["share"] for t in row["top"]]
        scores = [t["score"] for t in row["top"]]
        assert len(row["top"]) == 5 and scores == sorted(scores, reverse=True)
        assert sum(shares) + row["remaining_influence"] == pytest.approx(1.0, abs=1e-6)
    result_npz = DataAttributionResult.load(out / "attribution.npz")
    assert result_npz.indices.shape == (2, 5) and result_npz.soft is not None
    assert (out / "report.html").is_file() and "share of influence" in (out / "gallery.html").read_text()
    # the HTML gallery sizes each image by its share: the largest share gets the largest image
    page = (out / "gallery.html").read_text()
    assert page.count("<img") == 2 * 6


def test_query_resizes_a_wrong_size_image(store: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8), mode="L").save(big)
    result = CliRunner().invoke(app, ["query", "--store", str(store), str(big), "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["queries"][0]["top"]) == 20


def test_query_wrong_channels_is_a_clear_error_unless_converted(store: Path, tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8), mode="RGB").save(rgb)
    out = tmp_path / "o"
    bad = CliRunner().invoke(app, ["query", "--store", str(store), str(rgb), "--out", str(out)])
    assert bad.exit_code == 2 and "3 channel(s)" in bad.output and "--convert" in bad.output
    assert not (out / "results.json").exists()
    ok = CliRunner().invoke(app, ["query", "--store", str(store), str(rgb), "--convert", "--out", str(out)])
    assert ok.exit_code == 0, ok.output


def test_query_bad_files_and_stores_are_clear_errors(store: Path, queries: list[Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    out = str(tmp_path / "o")
    result = CliRunner().invoke(app, ["query", "--store", str(store), str(corrupt), "--out", out])
    assert result.exit_code == 2 and "corrupt.png" in result.output
    result = CliRunner().invoke(app, ["query", "--store", str(store), str(tmp_path / "nope.png"), "--out", out])
    assert result.exit_code == 2 and "does not exist" in result.output
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = CliRunner().invoke(app, ["query", "--store", str(store), str(text), "--out", out])
    assert result.exit_code == 2 and "not an image file" in result.output
    result = CliRunner().invoke(app, ["query", "--store", str(tmp_path / "missing"), str(queries[0]), "--out", out])
    assert result.exit_code == 2 and "does not exist" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["query", "--store", str(empty), str(queries[0]), "--out", out])
    assert result.exit_code == 2 and "is empty" in result.output
    # a record but no features yet (an interrupted build)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((store / "config.json").read_text())
    result = CliRunner().invoke(app, ["query", "--store", str(half), str(queries[0]), "--out", out])
    assert result.exit_code == 2 and "no features yet" in result.output


def test_classifier_checkpoint_index(queries: list[Path], tmp_path: Path) -> None:
    clf_cfg = ClassifierConfig(image_size=8, width=4, feature_dim=8)
    train_classifier(
        clf_cfg, default_train_config(clf_cfg, n_steps=2, batch_size=8), load_dataset("digits", n=20), tmp_path / "clf"
    )
    folder = tmp_path / "clf-index"
    args = [*INDEX, "--extractor", "classifier", "--checkpoint", str(tmp_path / "clf"), "--store", str(folder)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads((folder / "config.json").read_text())["state"]
    assert (folder / info["extractor"]["weights"]).resolve() == (tmp_path / "clf").resolve()  # found by place...
    assert info["spec"]["extractor"]["weights"]  # ...and checked by content
    assert info["data"]["resize"] == 8
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["query", "--store", str(folder), str(queries[0]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "similarity[classifier]"
    bad = CliRunner().invoke(
        app, [*INDEX, "--extractor", "pixels", "--checkpoint", "x", "--store", str(tmp_path / "p")]
    )
    assert bad.exit_code == 2 and "no weights file" in bad.output


def test_tune_then_tuned_index_is_calibrated(queries: list[Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = DDPM(DDPMConfig.preset("tiny", image_size=8, channels=1))
    test = load_dataset("digits", split="test", n=60, seed=0)
    assert test.labels is not None
    bench = tmp_path / "bench"
    cfg = CustomizationConfig(
        n_object=6, n_style=2, style_exemplars=2, finetune_steps=1, batch_size=4, n_prior=4, n_samples=3, ddim_steps=2
    )
    build_customizations(base, test.images, test.labels.numpy(), bench, cfg, show_progress=False)
    untuned = tmp_path / "simclr"
    result = CliRunner().invoke(
        app, [*INDEX, "--extractor", "simclr", "--store", str(untuned), "--set", "steps=2", "--set", "width=4"]
    )
    assert result.exit_code == 0, result.output
    assert (untuned / "simclr" / "config.json").is_file()  # trained on the training set and kept (an artefact)
    mapper = tmp_path / "mapper.safetensors"
    args = ["tune", "--store", str(untuned), "--customizations", str(bench), "--out", str(mapper)]
    result = CliRunner().invoke(app, [*args, "--set", "max_steps=4", "--set", "eval_every=2", "--grid", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["roles"]["tune"] >= 1 and summary["roles"]["val"] >= 1 and summary["calibration"]["inv_tau"] > 0
    assert summary["chosen"]["lr"] in (1e-3, 1e-4, 1e-5)
    tuned = tmp_path / "tuned"
    weights = str(untuned / "simclr")
    args = [*INDEX, "--extractor", "simclr", "--checkpoint", weights, "--mapper", str(mapper), "--store", str(tuned)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibrated"] is True
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["query", "--store", str(tuned), str(queries[0]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["method"] == "similarity[simclr+tuned]" and answer["calibrated"] is True
    assert answer["calibration"]["inv_tau"] == pytest.approx(summary["calibration"]["inv_tau"])
    again = ["tune", "--store", str(tuned), "--customizations", str(bench)]
    bad = CliRunner().invoke(app, [*again, "--out", str(tmp_path / "m2.safetensors")])
    assert bad.exit_code == 2 and "already a tuned index" in bad.output
    taken = CliRunner().invoke(app, [*again, "--out", str(mapper)])
    assert taken.exit_code == 2 and "already holds a linear feature mapper" in taken.output
