"""TRAK featurization of tar shards as Ray tasks on a local 2-CPU cluster, each reading its own images: the features
of the in-process fit over the same images, bit for bit. Ray is part of the dev extra, so this runs rather than skips.
"""

# ruff: noqa: F811  (the fixtures imported from the fixture modules are requested by name)
from __future__ import annotations

import numpy as np
import pytest
from collection_fixtures import digits_folder, digits_tars  # noqa: F401 (fixtures, used by name)
from shard_fixtures import CONFIG, checkpoint  # noqa: F401 (fixtures, used by name)

from genprov.attribution.data.trak import TRAKAttributor
from genprov.attribution.data.trak_shards import featurize_collection, recorded_collection
from genprov.data import load_dataset
from genprov.models.checkpoints import load_checkpoint
from genprov.storage.shards import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def test_two_ray_workers_featurize_tar_shards_as_the_in_process_fit(
    checkpoint, digits_folder, digits_tars, tmp_path
) -> None:
    model = load_checkpoint(checkpoint).model
    reference = TRAKAttributor(model, config=CONFIG).fit(load_dataset(str(digits_folder)).images)
    attributor = TRAKAttributor(model, config=CONFIG)
    featurize_collection(attributor, digits_tars, tmp_path / "store", RayBackend(workers=2))
    np.testing.assert_array_equal(np.asarray(attributor.train_features_), np.asarray(reference.train_features_))
    recorded = recorded_collection(tmp_path / "store")
    assert recorded is not None and recorded.kind == "tar" and recorded.counts == (12, 10, 8)
