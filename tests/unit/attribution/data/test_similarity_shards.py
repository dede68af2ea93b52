"""A similarity index built from an image collection shard by shard: the in-process index bit for bit, resumable."""

# ruff: noqa: F811  (the fixtures imported from collection_fixtures are requested by name)
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from collection_fixtures import EXTRACTOR, SIMILARITY, digits_folder, digits_tars, reference  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from genprov.attribution.data.index_folder import build_similarity_index, index_collection, open_similarity_index
from genprov.attribution.data.similarity_shards import SimilarityShardTask
from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.attribution.data.trak_shards import TRAKShardTask
from genprov.cli.similarity import app
from genprov.data import load_dataset, save_images
from genprov.data.collections import collection_spec, resolve_collection
from genprov.exceptions import DataError, StoreMismatchError
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.storage import FeatureIndex
from genprov.storage.shards import DRIVER_LOCK_FILE


def _features(folder) -> torch.Tensor:
    return FeatureIndex.open(folder).features()


def test_an_index_of_a_folder_or_of_tar_shards_equals_the_in_process_one(
    digits_folder, digits_tars, reference, tmp_path
) -> None:
    for name, source in (("folder", str(digits_folder)), ("tars", digits_tars)):
        attributor, images, record = index_collection(
            EXTRACTOR, tmp_path / name, {"name": source}, similarity_config=SIMILARITY
        )
        assert len(images) == 30 and attributor.n_train_ == 30
        torch.testing.assert_close(_features(tmp_path / name), reference, rtol=0, atol=0)
        assert record.state["data_fingerprint"].startswith("collection:")
        assert record.state["data"]["name"] == source
    # a built-in data set gives the very index an in-process build gives (same data fingerprint)
    built = build_similarity_index(
        EXTRACTOR, tmp_path / "fit", {"name": "digits", "n": 20}, similarity_config=SIMILARITY
    )
    sharded = index_collection(EXTRACTOR, tmp_path / "set", {"name": "digits", "n": 20}, similarity_config=SIMILARITY)
    assert sharded[2].state["data_fingerprint"] == built[2].state["data_fingerprint"]
    torch.testing.assert_close(_features(tmp_path / "set"), _features(tmp_path / "fit"), rtol=0, atol=0)


def test_a_killed_build_resumes_with_the_missing_shards_only(digits_folder, reference, tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    real = SimilarityShardTask.__call__

    def dies_on_third(self: SimilarityShardTask, start: int, stop: int) -> dict[str, np.ndarray]:
        calls.append(start)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(self, start, stop)

    monkeypatch.setattr(SimilarityShardTask, "__call__", dies_on_third)
    data = {"name": str(digits_folder)}
    with pytest.raises(KeyboardInterrupt):
        index_collection(EXTRACTOR, tmp_path / "index", data, similarity_config=SIMILARITY)
    assert (tmp_path / "index" / DRIVER_LOCK_FILE).read_bytes() == b""  # released
    calls.clear()
    monkeypatch.setattr(SimilarityShardTask, "__call__", lambda self, a, b: calls.append(a) or real(self, a, b))
    index_collection(EXTRACTOR, tmp_path / "index", data, similarity_config=SIMILARITY)
    assert calls == [14, 21, 28]  # shards 0 and 1 were kept
    torch.testing.assert_close(_features(tmp_path / "index"), reference, rtol=0, atol=0)


def test_another_collection_is_refused_and_a_changed_one_is_noticed(digits_folder, tmp_path) -> None:
    copy = tmp_path / "copy"
    save_images(load_dataset(str(digits_folder)).images, copy)
    index_collection(EXTRACTOR, tmp_path / "index", {"name": str(copy)}, similarity_config=SIMILARITY)
    attributor, train, _ = open_similarity_index(tmp_path / "index")
    torch.testing.assert_close(train.images, load_dataset(str(copy)).images, rtol=0, atol=0)
    assert attributor.attribute(train.images[:2], k=1).indices[:, 0].tolist() == [0, 1]
    save_images(load_dataset("digits", n=1, seed=9).images, copy, prefix="zz")  # the collection grew
    with pytest.raises(DataError, match="now holds 31 images"):
        open_similarity_index(tmp_path / "index")
    with pytest.raises(StoreMismatchError, match="another training set"):
        index_collection(EXTRACTOR, tmp_path / "index", {"name": str(copy)}, similarity_config=SIMILARITY)


def test_cli_index_of_tar_shards_in_process(digits_tars, reference, tmp_path) -> None:
    args = ["index", "--extractor", EXTRACTOR, "--data", digits_tars, "--store", str(tmp_path / "index")]
    result = CliRunner().invoke(app, [*args, "--set", "similarity.shard_size=7", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_train"] == 30
    torch.testing.assert_close(_features(tmp_path / "index"), reference, rtol=0, atol=0)
    result = CliRunner().invoke(app, [*args, "--workers", "2"])
    assert result.exit_code != 0 and "--workers is for --backend processes or ray" in result.output


def test_a_trak_task_reads_its_range_of_a_collection(digits_folder) -> None:
    """TRAKShardTask given a collection spec reads images [start, stop) itself: the features of the images."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = DDPM(DDPMConfig.preset("tiny")).eval()
    config = TRAKConfig(output_function="squared-l2-norm", n_timesteps=2, proj_dim=8, batch_size=4)
    images = load_dataset(str(digits_folder)).images
    spec = TRAKAttributor(model, config=config).store_spec(images)
    collection = resolve_collection(collection_spec(digits_folder))
    from_arrays = TRAKShardTask(config, images, spec["model_fingerprint"], model=model)
    from_collection = TRAKShardTask(config, collection, spec["model_fingerprint"], model=model)
    np.testing.assert_array_equal(from_collection(5, 13)["features"], from_arrays(5, 13)["features"])
