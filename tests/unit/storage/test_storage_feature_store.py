"""Feature store: shards, resumption, spec checks, atomic manifests, raw D-TRAK memmaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genprov.exceptions import ConfigError, DataError, StoreMismatchError
from genprov.storage import (
    MANIFEST_FILE,
    FeatureStore,
    Manifest,
    fingerprint_state,
    read_manifest,
    read_raw_features,
    spec_differences,
)

SPEC = {"config": {"output_function": "loss", "seed": 0, "timesteps": [0, 500]}, "model_fingerprint": "abc"}


def _rows(start: int, stop: int, dim: int = 3) -> np.ndarray:
    return np.arange(start * dim, stop * dim, dtype=np.float32).reshape(stop - start, dim)


def _store(path, **overrides) -> FeatureStore:
    kwargs = {"n_rows": 7, "arrays": {"features": 3}, "spec": SPEC, "shard_size": 3, **overrides}
    return FeatureStore.create(path, **kwargs)


def test_shards_fill_the_array_and_complete_the_store(tmp_path) -> None:
    store = _store(tmp_path / "s")
    assert store.n_shards == 3 and store.missing_shards() == [0, 1, 2]
    assert [store.shard_bounds(i) for i in range(3)] == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(DataError, match="incomplete"):
        store.read()
    for i in (2, 0, 1):
        start, stop = store.shard_bounds(i)
        store.write_shard(i, {"features": _rows(start, stop)})
    assert store.is_complete
    np.testing.assert_array_equal(store.read(), _rows(0, 7))
    assert store.read().dtype == np.float32
    assert isinstance(store.read_tensor(), torch.Tensor)
    reopened = FeatureStore.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.read(), _rows(0, 7))
    assert reopened.spec == SPEC
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]


def test_reopening_with_the_same_spec_resumes(tmp_path) -> None:
    store = _store(tmp_path / "s", info={"note": "first"})
    store.write_shard(1, {"features": _rows(3, 6)})
    again = _store(tmp_path / "s", info={"more": 1})
    assert again.missing_shards() == [0, 2]
    assert again.info == {"note": "first", "more": 1}
    np.testing.assert_array_equal(again.read(allow_incomplete=True)[3:6], _rows(3, 6))
    fresh = _store(tmp_path / "s", resume=False)
    assert fresh.missing_shards() == [0, 1, 2]
    assert not fresh.read(allow_incomplete=True).any()


def test_a_crash_before_the_manifest_update_leaves_the_shard_pending(tmp_path, monkeypatch) -> None:
    store = _store(tmp_path / "s")
    store.write_shard(0, {"features": _rows(0, 3)})

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("genprov.storage.feature_store.write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, {"features": _rows(3, 6)})
    monkeypatch.undo()
    resumed = _store(tmp_path / "s")
    assert resumed.missing_shards() == [1, 2]
    assert read_manifest(tmp_path / "s").shards == ["done", "pending", "pending"]


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        (
            {"spec": {**SPEC, "config": {**SPEC["config"], "output_function": "squared-l2-norm"}}},
            ["config.output_function"],
        ),
        ({"spec": {**SPEC, "model_fingerprint": "xyz"}}, ["model_fingerprint"]),
        ({"spec": {**SPEC, "config": {**SPEC["config"], "timesteps": [0, 1]}}}, ["config.timesteps"]),
        ({"n_rows": 8}, ["layout.n_rows"]),
        ({"arrays": {"features": 4}}, ["layout.arrays.features"]),
        ({"dtype": "float64", "shard_size": 2}, ["layout.dtype", "layout.shard_size"]),
    ],
)
def test_a_different_spec_raises_naming_the_fields(tmp_path, changes, fields) -> None:
    _store(tmp_path / "s").write_shard(0, {"features": _rows(0, 3)})
    with pytest.raises(StoreMismatchError) as err:
        _store(tmp_path / "s", **changes)
    for field in fields:
        assert field in str(err.value)
    assert read_manifest(tmp_path / "s").shards[0] == "done"  # the store is untouched


def test_bad_writes_and_layouts_are_refused(tmp_path) -> None:
    store = _store(tmp_path / "s")
    with pytest.raises(DataError, match=r"shape \(3, 3\)"):
        store.write_shard(0, {"features": np.zeros((2, 3), np.float32)})
    with pytest.raises(DataError, match="NaN"):
        store.write_shard(0, {"features": np.full((3, 3), np.nan, np.float32)})
    with pytest.raises(DataError, match="exactly the arrays"):
        store.write_shard(0, {"other": np.zeros((3, 3))})
    with pytest.raises(DataError, match="shard must be in"):
        store.shard_bounds(3)
    assert store.missing_shards() == [0, 1, 2]
    with pytest.raises(ConfigError, match="dtype"):
        _store(tmp_path / "t", dtype="float16")
    with pytest.raises(ConfigError, match="n_rows"):
        _store(tmp_path / "t", n_rows=0)
    with pytest.raises(DataError, match="not a genprov store"):
        FeatureStore.open(tmp_path / "nowhere")


def test_several_arrays_and_a_damaged_file(tmp_path) -> None:
    store = _store(tmp_path / "s", arrays={"features": 3, "norms": 1})
    store.write_shard(0, {"features": _rows(0, 3), "norms": np.ones((3, 1))})
    assert store.dim("norms") == 1
    (tmp_path / "s" / "norms.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="do not match the manifest"):
        FeatureStore.open(tmp_path / "s")
    rebuilt = _store(tmp_path / "s", arrays={"features": 3, "norms": 1})  # same spec: files are recreated
    assert rebuilt.missing_shards() == [0, 1, 2]


def test_manifest_round_trip_and_version_check(tmp_path) -> None:
    manifest = Manifest(kind="features", spec={"a": [1, 2]}, shards=["done", "pending"], info={"x": "y"})
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest.to_dict(), "version": 99}))
    with pytest.raises(DataError, match="version"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match="shards"):
        Manifest.from_dict({**manifest.to_dict(), "shards": ["half"]})


def test_spec_differences_are_dotted_and_tuple_blind() -> None:
    saved = {"config": {"timesteps": [0, 1], "seed": 0}, "k": 4}
    assert spec_differences(saved, {"config": {"timesteps": (0, 1), "seed": 0}, "k": 4}) == {}
    diffs = spec_differences(saved, {"config": {"timesteps": [0, 1], "seed": 1}, "extra": True, "k": 4})
    assert diffs == {"config.seed": (0, 1), "extra": (None, True)}


def test_fingerprint_state_tracks_weights() -> None:
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert fingerprint_state(a) == fingerprint_state(b) == fingerprint_state(dict(a.state_dict()))
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert fingerprint_state(a) != fingerprint_state(b)


def test_raw_dtrak_memmaps_are_read(tmp_path) -> None:
    path = tmp_path / "grads.mmap"
    raw = np.memmap(path, dtype=np.float32, mode="w+", shape=(5, 4))
    raw[:] = np.arange(20, dtype=np.float32).reshape(5, 4)
    raw.flush()
    del raw
    features = read_raw_features(path, 4)
    assert features.shape == (5, 4)
    np.testing.assert_array_equal(features, np.arange(20, dtype=np.float32).reshape(5, 4))
    with pytest.raises(DataError, match="whole number of rows"):
        read_raw_features(path, 3)
    with pytest.raises(DataError, match="does not exist"):
        read_raw_features(tmp_path / "missing", 4)
