"""TRAK featurization through the shard driver: the same store as fit, a killed driver resumed, a moved checkpoint."""

# ruff: noqa: F811  (the fixtures imported from shard_fixtures are requested by name)
from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from shard_fixtures import CONFIG, checkpoint, kill_driver_on_call, reference, train  # noqa: F401 (fixtures, used by name)

from genprov.attribution.data.trak import TRAKAttributor
from genprov.attribution.data.trak_shards import ModelSource, TRAKShardTask, featurize_sharded
from genprov.exceptions import StoreMismatchError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.storage import FeatureStore, read_manifest
from genprov.storage.shards import DRIVER_LOCK_FILE, ProcessBackend, StoreLockedError, driver_lock


def test_the_driver_fills_the_store_fit_fills_bit_identically(checkpoint, train, reference, tmp_path) -> None:
    attributor = featurize_sharded(TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG), train, tmp_path)
    assert attributor.store_ is not None and attributor.store_.n_shards == 4
    np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)
    again = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG).fit(train, store=tmp_path)
    np.testing.assert_array_equal(np.asarray(again.train_features_), reference)  # fit reopens it as its own


def test_a_killed_driver_is_resumed_by_the_next_one(checkpoint, train, reference, tmp_path, monkeypatch) -> None:
    real = TRAKShardTask.__call__
    calls = kill_driver_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        featurize_sharded(TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG), train, tmp_path)
    assert read_manifest(tmp_path).shards == ["done", "done", "pending", "pending"]
    # a driver killed by a signal leaves its lock behind: a process of this host that no longer runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00", "token": "x"}
    (tmp_path / DRIVER_LOCK_FILE).write_text(json.dumps(record))
    calls.clear()
    monkeypatch.setattr(TRAKShardTask, "__call__", lambda self, a, b: calls.append(a) or real(self, a, b))
    resumed = featurize_sharded(TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG), train, tmp_path)
    assert calls == [12, 18]  # the finished shards were kept
    np.testing.assert_array_equal(np.asarray(resumed.train_features_), reference)


def test_a_second_driver_on_the_store_is_refused(checkpoint, train, tmp_path) -> None:
    with driver_lock(tmp_path), pytest.raises(StoreLockedError, match="being filled by another driver"):
        featurize_sharded(TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG), train, tmp_path)
    assert FeatureStore.open(tmp_path).n_done == 0


def test_a_worker_task_reopens_the_checkpoint_and_refuses_changed_weights(checkpoint, train, reference) -> None:
    model = load_checkpoint(checkpoint).model
    source = ModelSource.of(model)
    assert source == ModelSource("checkpoint", str(checkpoint.resolve()), "ddpm")
    spec = TRAKAttributor(model, config=CONFIG).store_spec(train)
    driver_side = TRAKShardTask(CONFIG, train, spec["model_fingerprint"], source, local=TRAKAttributor(model))
    worker_side = pickle.loads(pickle.dumps(driver_side))  # what a Ray worker receives: no attributor
    assert worker_side.local is None
    np.testing.assert_array_equal(worker_side(6, 12)["features"], reference[6:12])
    in_memory = TRAKShardTask(CONFIG, train, spec["model_fingerprint"], model=DDPM(DDPMConfig.preset("tiny")))
    with pytest.raises(
        StoreMismatchError, match=r"The model sent to the worker has fingerprint .* but the store was created for"
    ):
        in_memory(0, 6)


def test_fit_takes_the_driver_lock_only_while_it_writes(checkpoint, train, reference, tmp_path) -> None:
    model = load_checkpoint(checkpoint).model
    with driver_lock(tmp_path), pytest.raises(StoreLockedError, match="being filled by another driver"):
        TRAKAttributor(model, config=CONFIG).fit(train, store=tmp_path)
    TRAKAttributor(model, config=CONFIG).fit(train, store=tmp_path)  # the lock was released by the refusal
    with driver_lock(tmp_path):  # a finished store is read without the lock
        done = TRAKAttributor(model, config=CONFIG).fit(train, store=tmp_path)
    np.testing.assert_array_equal(np.asarray(done.train_features_), reference)


def test_spawned_processes_fill_the_store_bit_identically(checkpoint, train, reference, tmp_path) -> None:
    attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=CONFIG)
    featurize_sharded(attributor, train, tmp_path, ProcessBackend(workers=2))
    np.testing.assert_array_equal(np.asarray(attributor.train_features_), reference)
