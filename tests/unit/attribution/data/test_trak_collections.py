"""TRAK featurization of an image collection: each shard task reads its own images, the features equal the
in-process fit over the same images bit for bit, the store records the collection (resumed on it, refused on a
changed one) and is reopened, and scored, reading only the training images a gallery shows."""

# ruff: noqa: F811  (the fixtures imported from the fixture modules are requested by name)
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from collection_fixtures import digits_folder, digits_tars  # noqa: F401 (fixtures, used by name)
from PIL import Image
from shard_fixtures import CONFIG, checkpoint, kill_driver_on_call  # noqa: F401 (fixtures, used by name)
from typer.testing import CliRunner

from genprov.app.engine import ProvenanceEngine
from genprov.app.register import add_trak
from genprov.app.workspace import Workspace
from genprov.attribution.data.trak import TRAKAttributor
from genprov.attribution.data.trak_shards import (
    COLLECTION_INFO,
    TRAKShardTask,
    featurize_collection,
    fit_collection_store,
    recorded_collection,
)
from genprov.cli.trak import _attributor as _opened_store
from genprov.cli.trak import app
from genprov.data import load_dataset, save_images
from genprov.data.collections import ImageCollection, collection_spec
from genprov.data.images import to_uint8
from genprov.exceptions import DataError, StoreMismatchError
from genprov.models.checkpoints import load_checkpoint
from genprov.storage import FeatureStore
from genprov.storage.shards import ProcessBackend


def _attributor(checkpoint: Path) -> TRAKAttributor:
    return TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG)


@pytest.fixture(scope="module")
def reference(checkpoint, digits_folder, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Features of the in-process fit over the folder's images, loaded whole."""
    store = tmp_path_factory.mktemp("ref") / "store"
    fitted = _attributor(checkpoint).fit(load_dataset(str(digits_folder)).images, store=store)
    return np.array(fitted.train_features_)


@pytest.fixture
def driver_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every ``ImageCollection.read`` in this process (spawned workers are not patched)."""
    sizes: list[int] = []
    real = ImageCollection.read

    def read(self: ImageCollection, start: int, stop: int) -> torch.Tensor:
        sizes.append(stop - start)
        return real(self, start, stop)

    monkeypatch.setattr(ImageCollection, "read", read)
    return sizes


def test_two_processes_featurize_a_folder_and_tar_shards_as_the_in_process_fit(
    checkpoint, digits_folder, digits_tars, reference, driver_reads, tmp_path
) -> None:
    # spawned workers read the folder's images (the CLI test below runs the tar shards on them); here in process
    for name, source, backend in (
        ("folder", str(digits_folder), ProcessBackend(workers=2)),
        ("tars", digits_tars, None),
    ):
        attributor = featurize_collection(_attributor(checkpoint), source, tmp_path / name, backend)
        np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)
        fs = FeatureStore.open(tmp_path / name)
        assert fs.n_shards == 5 and fs.info["n_train"] == 30
        assert fs.spec["data_fingerprint"].startswith("collection:")
        recorded = recorded_collection(fs)
        assert recorded is not None and recorded.length == 30 and recorded.source == source
        assert fs.spec["data_fingerprint"] == f"collection:{recorded.fingerprint}"
    # the driver read one image of the folder (the workers the rest), then the tar shards' one and shard by shard
    assert driver_reads == [1, 1, 6, 6, 6, 6, 6]
    # the reopened store: its attributor without featurizing, and the artefact saved from it
    again = _attributor(checkpoint)
    images = fit_collection_store(again, tmp_path / "tars")
    assert len(images) == 30
    np.testing.assert_array_equal(np.asarray(again.train_features_), reference)
    queries = load_dataset("digits", split="test", n=3).images
    again.save_pretrained(tmp_path / "artefact")
    reopened = TRAKAttributor.from_pretrained(tmp_path / "artefact")
    torch.testing.assert_close(reopened.scores(queries), again.scores(queries), rtol=0, atol=0)
    # fit with pixels cannot check a collection's cheap key: refused, naming the way to reopen the store
    with pytest.raises(StoreMismatchError, match=r"holds features of an image collection .*fit_collection_store"):
        _attributor(checkpoint).fit(load_dataset(str(digits_folder)).images, store=tmp_path / "tars")


def test_a_built_in_data_set_gives_the_very_store_fit_writes(checkpoint, tmp_path) -> None:
    train = load_dataset("digits", n=12)
    fitted = _attributor(checkpoint).fit(train, store=tmp_path / "fit")
    spec = collection_spec("digits", n=12)
    sharded = featurize_collection(_attributor(checkpoint), spec, tmp_path / "collection")
    a, b = FeatureStore.open(tmp_path / "fit"), FeatureStore.open(tmp_path / "collection")
    assert a.spec == b.spec  # the pixels' fingerprint, as fit records
    assert a.manifest.checksums == b.manifest.checksums
    np.testing.assert_array_equal(np.asarray(sharded.train_features_), np.asarray(fitted.train_features_))
    reopened = _attributor(checkpoint).fit(train, store=tmp_path / "collection")  # fit takes it as its own
    np.testing.assert_array_equal(np.asarray(reopened.train_features_), np.asarray(fitted.train_features_))


def test_a_killed_run_resumes_on_the_same_collection_and_a_changed_one_is_refused(
    checkpoint, digits_folder, reference, tmp_path, monkeypatch
) -> None:
    copy = tmp_path / "copy"
    save_images(load_dataset(str(digits_folder)).images, copy)
    real = TRAKShardTask.__call__
    calls = kill_driver_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        featurize_collection(_attributor(checkpoint), str(copy), tmp_path / "store")
    with pytest.raises(DataError, match="is unfinished"):
        fit_collection_store(_attributor(checkpoint), tmp_path / "store")
    calls.clear()
    monkeypatch.setattr(TRAKShardTask, "__call__", lambda self, a, b: calls.append(a) or real(self, a, b))
    resumed = featurize_collection(_attributor(checkpoint), str(copy), tmp_path / "store")
    assert calls == [12, 18, 24]  # shards 0 and 1 were kept
    np.testing.assert_array_equal(np.asarray(resumed.train_features_), reference)
    save_images(load_dataset("digits", n=1, seed=9).images, copy, prefix="zz")  # the collection grew
    with pytest.raises(StoreMismatchError, match=r"started on\) features of the collection .* \(30 images.* has 31"):
        featurize_collection(_attributor(checkpoint), str(copy), tmp_path / "store")
    with pytest.raises(DataError, match="now holds 31 images"):
        fit_collection_store(_attributor(checkpoint), tmp_path / "store")
    # a store of images in memory is named as such
    _attributor(checkpoint).fit(load_dataset("digits", n=6).images, store=tmp_path / "pixels")
    with pytest.raises(StoreMismatchError, match=r"pixel fingerprint \w+ \(not a collection"):
        featurize_collection(_attributor(checkpoint), str(copy), tmp_path / "pixels")
    with pytest.raises(DataError, match="records no image collection"):
        fit_collection_store(_attributor(checkpoint), tmp_path / "pixels")


CLI_BASE = ["--n-timesteps", "2", "--proj-dim", "16", "--output-function", "squared-l2-norm"]
CLI_BASE += ["--set", "batch_size=3", "--set", "shard_size=6", "--json"]


def test_cli_featurizes_tar_shards_on_processes_and_scores_reading_only_the_images_shown(
    checkpoint, digits_folder, digits_tars, driver_reads, tmp_path
) -> None:
    runner = CliRunner()
    stores = {"folder": tmp_path / "folder", "tars": tmp_path / "tars"}
    in_process = ["featurize", "--model", str(checkpoint), "--data", str(digits_folder), *CLI_BASE]
    result = runner.invoke(app, [*in_process, "--store", str(stores["folder"])])
    assert result.exit_code == 0, result.output
    assert COLLECTION_INFO not in FeatureStore.open(stores["folder"]).info  # in process: as before, pixels loaded
    # resumed with workers, a store started from loaded images goes on as it was started
    result = runner.invoke(app, [*in_process, "--store", str(stores["folder"]), "--backend", "processes"])
    assert result.exit_code == 0, result.output
    args = ["featurize", "--model", str(checkpoint), "--data", digits_tars, *CLI_BASE, "--store", str(stores["tars"])]
    result = runner.invoke(app, [*args, "--backend", "processes", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_train"] == 30
    folder, tars = FeatureStore.open(stores["folder"]), FeatureStore.open(stores["tars"])
    np.testing.assert_array_equal(tars.read(), folder.read())
    assert tars.info[COLLECTION_INFO]["source"] == digits_tars and tars.info["data"]["name"] == digits_tars
    assert set(driver_reads) == {1}
    driver_reads.clear()
    top: dict[str, list] = {}
    for name, store in stores.items():
        score = ["score", "--store", str(store), "--queries", "digits", "--n-queries", "3", "--top-k", "4"]
        result = runner.invoke(app, [*score, "--negatives", "2", "--out", str(tmp_path / f"why-{name}"), "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / f"why-{name}" / "results.json").read_text())
        assert summary["n_train"] == 30 and (tmp_path / f"why-{name}" / "report.html").is_file()
        top[name] = [q["top"] for q in summary["queries"]]
    assert top["tars"] == top["folder"]
    assert driver_reads and set(driver_reads) == {1} and len(driver_reads) <= 3 * (4 + 2)  # only the shown images
    html = (tmp_path / "why-tars" / "report.html").read_text()
    assert f"#{top['tars'][0][0]['index']}" in html
    # 'trak lds' (which needs every training image for its pixel baseline) reads the collection whole
    opened = _opened_store(stores["tars"], [])
    torch.testing.assert_close(opened.train.images, load_dataset(str(digits_folder)).images, rtol=0, atol=0)
    # the service takes the collection's store (the images read from the shards when it is added, checked
    # unchanged) and answers as the store of the same images loaded in one process
    ws = Workspace.create(tmp_path / "ws")
    for name, store in stores.items():
        add_trak(ws, name, store)
    engine = ProvenanceEngine.load(ws)
    assert engine.errors == {}
    query = Image.fromarray(to_uint8(load_dataset("digits", split="test", n=1).images)[0, ..., 0])
    answers = {name: engine.analyzers[name].analyze(query) for name in stores}
    ranked = {name: [(p["index"], p["score"]) for p in a["positive"]] for name, a in answers.items()}
    assert ranked["tars"] and ranked["tars"] == ranked["folder"]


def test_cli_refuses_tar_shards_with_captions_before_opening_anything(digits_tars, tmp_path) -> None:
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")  # looks like a pipeline folder; never opened
    args = ["featurize", "--model", str(pipeline), "--data", digits_tars, "--captions", "labels"]
    result = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "store"), "--backend", "processes"])
    assert result.exit_code != 0
    assert "read only shard by shard" in result.output and "--captions" in result.output
    assert not (tmp_path / "store").exists()
