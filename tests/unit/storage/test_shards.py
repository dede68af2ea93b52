"""Shards on a backend: the driver writes each finished shard, resumes, and holds one lock per store."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genprov.exceptions import ConfigError
from genprov.storage import FeatureStore
from genprov.storage.shards import (
    DRIVER_LOCK_FILE,
    InProcessBackend,
    ProcessBackend,
    RayBackend,
    StoreLockedError,
    driver_lock,
    make_backend,
    run_shards,
    store_shards,
)


def rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """A task whose rows depend on their indices only."""
    index = np.arange(start, stop, dtype=np.float32)[:, None]
    return {"features": index * np.arange(1, 4, dtype=np.float32)}


def new_store(path: Path) -> FeatureStore:
    return FeatureStore.create(path, n_rows=10, arrays={"features": 3}, spec={"seed": 0}, shard_size=4)


def test_shards_carry_their_rows_and_store(tmp_path) -> None:
    store = new_store(tmp_path / "s")
    shards = store_shards(store)
    assert [(s.index, s.start, s.stop, len(s)) for s in shards] == [(0, 0, 4, 4), (1, 4, 8, 4), (2, 8, 10, 2)]
    assert list(shards[2].rows) == [8, 9] and shards[0].store == store.path


def test_the_driver_writes_every_shard_and_releases_the_lock(tmp_path) -> None:
    store = new_store(tmp_path / "s")
    assert run_shards(store, rows, InProcessBackend()) == [0, 1, 2]
    np.testing.assert_array_equal(store.read("features"), rows(0, 10)["features"])
    assert (tmp_path / "s" / DRIVER_LOCK_FILE).read_bytes() == b""  # free again
    assert run_shards(store, rows) == []  # nothing left


def test_an_interrupted_driver_resumes_with_the_missing_shards_only(tmp_path) -> None:
    store = new_store(tmp_path / "s")
    calls: list[int] = []

    def dies_on_second(start: int, stop: int) -> dict[str, np.ndarray]:
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return rows(start, stop)

    with pytest.raises(KeyboardInterrupt):
        run_shards(store, dies_on_second)
    assert store.missing_shards() == [1, 2]
    calls.clear()
    assert run_shards(FeatureStore.open(store.path), lambda a, b: calls.append(a) or rows(a, b)) == [1, 2]
    assert calls == [4, 8]
    np.testing.assert_array_equal(store.read("features"), rows(0, 10)["features"])


def test_a_second_driver_is_refused_naming_the_holder(tmp_path) -> None:
    store = new_store(tmp_path / "s")
    with driver_lock(store.path) as holder:
        pattern = re.escape(
            f"another driver (pid {os.getpid()} on {socket.gethostname()}, started {holder['started']})"
        )
        with pytest.raises(StoreLockedError, match=pattern):
            run_shards(store, rows)
        with pytest.raises(StoreLockedError, match=DRIVER_LOCK_FILE), driver_lock(store.path):
            pass
    assert store.missing_shards() == [0, 1, 2]  # the refused driver wrote nothing
    assert run_shards(store, rows) == [0, 1, 2]


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog) -> None:
    store = new_store(tmp_path / "s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00", "token": "x"}
    (store.path / DRIVER_LOCK_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="genprov.storage.shards"):
        assert run_shards(store, rows) == [0, 1, 2]
    assert f"'pid': {dead.pid}" in caplog.text and "no longer runs" in caplog.text


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path) -> None:
    store = new_store(tmp_path / "s")
    record = {"pid": 1, "host": "elsewhere.invalid", "started": "2020-01-01T00:00:00+00:00", "token": "x"}
    (store.path / DRIVER_LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(StoreLockedError, match=r"pid 1 on elsewhere\.invalid.*delete .*\.driver\.lock"):
        run_shards(store, rows)


def test_backend_options_are_checked(tmp_path) -> None:
    assert isinstance(make_backend("inprocess"), InProcessBackend)
    assert make_backend("ray", address="auto", workers=3) == RayBackend(address="auto", workers=3)
    with pytest.raises(ConfigError, match="--backend must be one of"):
        make_backend("dask")
    with pytest.raises(ConfigError, match="--workers is for --backend processes or ray"):
        make_backend("inprocess", workers=2)
    assert make_backend("processes", workers=2) == ProcessBackend(workers=2)
    with pytest.raises(ConfigError, match="--address is for --backend ray"):
        make_backend("processes", address="auto")
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        ProcessBackend(workers=0)
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        RayBackend(workers=0)
