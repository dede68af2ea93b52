"""TRAK featurization as Ray tasks on a local 2-CPU cluster: bit-identical to one process, a killed worker retried.

Ray is part of the dev extra (``make test`` installs it), so these tests run rather than skip.
"""

# ruff: noqa: F811  (the fixtures imported from shard_fixtures are requested by name)
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from shard_fixtures import CONFIG, checkpoint, reference, train  # noqa: F401 (fixtures, used by name)
from typer.testing import CliRunner

from genprov.attribution.data import trak_shards
from genprov.attribution.data.trak import TRAKAttributor
from genprov.attribution.data.trak_shards import ModelSource, TRAKShardTask, featurize_sharded
from genprov.cli.trak import app
from genprov.exceptions import StoreMismatchError
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.storage import FeatureStore
from genprov.storage.shards import DRIVER_LOCK_FILE, RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def test_one_and_two_workers_give_the_features_of_one_process(checkpoint, train, reference, tmp_path) -> None:
    for workers in (1, 2):
        attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG)
        featurize_sharded(attributor, train, tmp_path / f"w{workers}", RayBackend(workers=workers))
        np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)
    # a model built in memory travels through the object store instead of its checkpoint
    in_memory = DDPM(DDPMConfig.preset("tiny")).eval()
    in_memory.load_state_dict(load_checkpoint(checkpoint).model.state_dict())
    attributor = featurize_sharded(TRAKAttributor(in_memory, config=CONFIG), train, tmp_path / "mem", RayBackend())
    np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)


def test_a_worker_killed_mid_shard_is_retried_and_changes_nothing(
    checkpoint, train, reference, tmp_path, monkeypatch
) -> None:
    marker = tmp_path / "killed-once"

    class KilledOnce(TRAKShardTask):
        """Kills its worker process in the first attempt of the shard starting at row 12."""

        def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
            if start == 12 and not marker.exists():
                marker.touch()
                os._exit(1)
            return TRAKShardTask.__call__(self, start, stop)

    monkeypatch.setattr(trak_shards, "TRAKShardTask", KilledOnce)
    attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG)
    featurize_sharded(attributor, train, tmp_path / "store", RayBackend(workers=2, max_retries=2))
    assert marker.exists()  # the worker did die
    np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)


def test_cli_featurize_on_ray_equals_in_process(checkpoint, tmp_path) -> None:
    base = ["featurize", "--model", str(checkpoint), "--data", "digits", "--n", "12", "--n-timesteps", "2"]
    base += ["--proj-dim", "16", "--set", "shard_size=5", "--json"]
    stores = {}
    for name, extra in (("inprocess", []), ("ray", ["--backend", "ray", "--workers", "2"])):
        result = CliRunner().invoke(app, [*base, "--store", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["shards"] == 3
        stores[name] = FeatureStore.open(tmp_path / name)
    np.testing.assert_array_equal(stores["ray"].read(), stores["inprocess"].read())
    assert stores["ray"].manifest.checksums == stores["inprocess"].manifest.checksums


def test_a_worker_opening_other_weights_fails_the_run_with_its_error(checkpoint, train, tmp_path) -> None:
    other = DDPM(DDPMConfig.preset("tiny")).eval()
    moved = save_checkpoint(tmp_path / "other", "ddpm", {"ddpm": other}, other.config)
    attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG)
    source = ModelSource("checkpoint", str(moved.resolve()), "ddpm")
    with pytest.raises(StoreMismatchError, match=re.escape(f"reopened from {moved.resolve()} has fingerprint")):
        featurize_sharded(attributor, train, tmp_path / "store", RayBackend(), source=source)
    assert FeatureStore.open(tmp_path / "store").n_done == 0
    assert (tmp_path / "store" / DRIVER_LOCK_FILE).read_bytes() == b""  # released
