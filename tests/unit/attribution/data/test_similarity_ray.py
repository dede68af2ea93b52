"""Similarity embedding of an image collection as Ray tasks on a local 2-CPU cluster: the in-process index bit for bit.

The tasks read their images from the collection and rebuild the extractor themselves (a trained SimCLR encoder from
its saved artefact). Ray is part of the dev extra (``make test`` installs it), so these tests run rather than skip.
"""

# ruff: noqa: F811  (the fixtures imported from collection_fixtures are requested by name)
from __future__ import annotations

import json

import pytest
import torch
from collection_fixtures import EXTRACTOR, SIMILARITY, digits_folder, digits_tars, reference  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from genprov.attribution.data.index_folder import index_collection
from genprov.cli.similarity import app
from genprov.storage import FeatureIndex
from genprov.storage.shards import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def test_one_and_two_workers_give_the_in_process_features(digits_folder, digits_tars, reference, tmp_path) -> None:
    for workers, source in ((1, str(digits_folder)), (2, str(digits_folder)), (2, digits_tars)):
        store = tmp_path / f"w{workers}-{len(source)}"
        index_collection(EXTRACTOR, store, {"name": source}, RayBackend(workers=workers), similarity_config=SIMILARITY)
        torch.testing.assert_close(FeatureIndex.open(store).features(), reference, rtol=0, atol=0)


def test_cli_index_on_ray_equals_in_process_with_a_trained_encoder(digits_folder, tmp_path) -> None:
    """simclr without --checkpoint trains its encoder here first; the Ray workers load the saved artefact."""
    base = ["index", "--extractor", "simclr", "--data", str(digits_folder), "--json"]
    base += ["--set", "steps=2", "--set", "width=4", "--set", "n_conv=1", "--set", "train_batch_size=8"]
    base += ["--set", "similarity.shard_size=7"]
    features = {}
    for name, extra in (("inprocess", []), ("ray", ["--backend", "ray", "--workers", "2"])):
        result = CliRunner().invoke(app, [*base, "--store", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["n_train"] == 30
        features[name] = FeatureIndex.open(tmp_path / name).features()
    torch.testing.assert_close(features["ray"], features["inprocess"], rtol=0, atol=0)
