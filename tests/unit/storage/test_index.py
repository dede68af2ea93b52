"""Feature index: exact search vs brute force, full scores, build / resume / add / reopen, FAISS, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genprov.exceptions import ConfigError, DataError, MissingDependencyError, StoreMismatchError
from genprov.storage import INDEX_FILE, FeatureIndex, exact_search, import_faiss

torch.set_num_threads(1)


def _features(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _reference(train: np.ndarray, queries: np.ndarray, k: int, cosine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: full matrix, stable argsort (ties: lower index first)."""
    t, q = train.astype(np.float64), queries.astype(np.float64)
    if cosine:
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = q @ t.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1), s


@pytest.mark.parametrize("metric", ["cosine", "inner-product"])
def test_exact_search_matches_brute_force_over_segments_and_chunks(tmp_path, metric) -> None:
    train, queries = _features(230, 16, 0), _features(7, 16, 1)
    index = FeatureIndex.create(tmp_path / "idx", dim=16, metric=metric)
    index.add(train[:100], shard_size=32)
    index.add(train[100:])
    assert index.n_rows == 230
    ref_i, ref_s, full = _reference(train, queries, 10, cosine=metric == "cosine")
    for chunk in (13, 64, 100_000):
        idx, sc = index.search(queries, 10, chunk_rows=chunk)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_allclose(sc.numpy(), ref_s, rtol=1e-5, atol=1e-5)
    idx64, sc64 = index.search(queries, 10, precision="float64")
    np.testing.assert_array_equal(idx64.numpy(), ref_i)
    np.testing.assert_allclose(sc64.numpy(), ref_s, rtol=1e-10, atol=1e-6)
    np.testing.assert_allclose(index.scores(queries, chunk_rows=17).numpy(), full, rtol=1e-5, atol=1e-5)


def test_exact_search_breaks_ties_by_lower_index() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    idx, sc = exact_search(torch.tensor([[1.0, 0.0]]), [(0, rows[:2]), (2, rows[2:])], 3, chunk_rows=1)
    assert idx.tolist() == [[0, 2, 3]]
    assert sc.tolist() == [[1.0, 1.0, 1.0]]


def test_reopen_round_trip_and_features(tmp_path) -> None:
    train = _features(50, 8, 2)
    index = FeatureIndex.create(tmp_path / "idx", dim=8, spec={"extractor": "pixels"})
    assert index.add(train) == range(0, 50)
    again = FeatureIndex.open(tmp_path / "idx")
    assert (again.n_rows, again.dim, again.metric, again.spec) == (50, 8, "cosine", {"extractor": "pixels"})
    normed = train / np.linalg.norm(train, axis=1, keepdims=True)
    np.testing.assert_allclose(again.features().numpy(), normed, rtol=1e-6)
    np.testing.assert_allclose(again.features([[3, 40], [0, 49]]).numpy(), normed[[[3, 40], [0, 49]]], rtol=1e-6)
    # reopening through create with the same settings keeps the rows; other settings are refused
    assert FeatureIndex.create(tmp_path / "idx", dim=8, spec={"extractor": "pixels"}).n_rows == 50
    with pytest.raises(StoreMismatchError, match=r"spec\.extractor"):
        FeatureIndex.create(tmp_path / "idx", dim=8, spec={"extractor": "simclr"})
    with pytest.raises(StoreMismatchError, match="dim"):
        FeatureIndex.create(tmp_path / "idx", dim=9, spec={"extractor": "pixels"})


def test_add_appends_and_search_sees_new_rows(tmp_path) -> None:
    train = _features(40, 8, 3)
    index = FeatureIndex.create(tmp_path / "idx", dim=8)
    index.add(train[:30])
    query = train[35:36] * 2.0
    assert index.search(query, 1)[0].item() < 30  # not present yet
    assert index.add(train[30:]) == range(30, 40)
    assert FeatureIndex.open(tmp_path / "idx").search(query, 1)[0].item() == 35
    assert [s["n_rows"] for s in index.segments] == [30, 10]


def test_build_resumes_only_missing_shards(tmp_path) -> None:
    train = _features(25, 4, 4)
    calls: list[tuple[int, int]] = []

    def compute(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        if a == 10 and len(calls) == 3:
            raise RuntimeError("killed")
        return train[a:b]

    index = FeatureIndex.create(tmp_path / "idx", dim=4)
    with pytest.raises(RuntimeError, match="killed"):
        index.add_computed(25, compute, key="data-1", shard_size=5)
    assert not index.is_complete
    with pytest.raises(DataError, match="unfinished"):
        index.search(train[:1], 1)
    with pytest.raises(StoreMismatchError, match="drop_incomplete"):
        index.add_computed(25, compute, key="other-data", shard_size=5)
    calls.clear()
    index = FeatureIndex.open(tmp_path / "idx")
    assert index.add_computed(25, compute, key="data-1", shard_size=5) == range(0, 25)
    assert calls == [(10, 15), (15, 20), (20, 25)]
    ref_i, _, _ = _reference(train, train[:3], 5)
    np.testing.assert_array_equal(index.search(train[:3], 5)[0].numpy(), ref_i)


def test_drop_incomplete(tmp_path) -> None:
    index = FeatureIndex.create(tmp_path / "idx", dim=2)
    index.add(np.ones((3, 2), dtype=np.float32))

    def boom(a: int, b: int) -> np.ndarray:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        index.add_computed(4, boom, key="x", shard_size=2)
    assert index.drop_incomplete()
    assert index.n_rows == 3 and index.is_complete and not index.drop_incomplete()


def test_bad_inputs_name_the_fix(tmp_path) -> None:
    with pytest.raises(DataError, match="No feature index"):
        FeatureIndex.open(tmp_path / "missing")
    empty = FeatureIndex.create(tmp_path / "empty", dim=4)
    with pytest.raises(DataError, match="empty; add features first"):
        empty.search(np.ones((1, 4), dtype=np.float32), 1)
    index = FeatureIndex.create(tmp_path / "idx", dim=4)
    index.add(_features(10, 4, 5))
    with pytest.raises(DataError, match="4 columns"):
        index.search(np.ones((2, 5), dtype=np.float32), 1)
    with pytest.raises(DataError, match="4 columns"):
        index.add(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        index.search(np.full((1, 4), np.nan, dtype=np.float32), 1)
    with pytest.raises(ConfigError, match="k must be"):
        index.search(np.ones((1, 4), dtype=np.float32), 11)
    with pytest.raises(ConfigError, match="backend"):
        index.search(np.ones((1, 4), dtype=np.float32), 1, backend="annoy")
    with pytest.raises(ConfigError, match="metric"):
        FeatureIndex.create(tmp_path / "m", dim=4, metric="l2")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INDEX_FILE).write_text("{not json")
    with pytest.raises(DataError, match="corrupted"):
        FeatureIndex.open(tmp_path / "bad")
    (tmp_path / "bad" / INDEX_FILE).write_text(json.dumps({"kind": "other"}))
    with pytest.raises(DataError, match="not a genprov feature index"):
        FeatureIndex.open(tmp_path / "bad")


def test_corrupt_segment_file_is_reported(tmp_path) -> None:
    index = FeatureIndex.create(tmp_path / "idx", dim=4)
    index.add(_features(10, 4, 9))
    (tmp_path / "idx" / "segments" / "000000" / "features.npy").write_bytes(b"truncated")
    with pytest.raises(DataError, match="featurize again"):
        FeatureIndex.open(tmp_path / "idx").search(np.ones((1, 4), dtype=np.float32), 1)


def test_faiss_recall_with_exact_reranking(tmp_path) -> None:
    try:
        faiss = import_faiss()
    except MissingDependencyError as err:
        pytest.skip(f"faiss-cpu not installed ({err})")
    faiss.omp_set_num_threads(1)
    # clustered data, like real embeddings (i.i.d. Gaussian vectors are a worst case for any ANN index)
    centers = _features(40, 32, 6) * 2.0
    train = centers.repeat(50, axis=0) + _features(2000, 32, 7)
    queries = centers[:20] + _features(20, 32, 8)
    index = FeatureIndex.create(tmp_path / "idx", dim=32)
    index.add(train)
    ref_i, _, full = _reference(train, queries, 10)
    for kind in ("hnsw", "ivf"):
        index.build_faiss(kind, n_lists=16, n_probe=8, seed=0)
        idx, sc = FeatureIndex.open(tmp_path / "idx").search(queries, 10, backend="faiss", n_candidates=50)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.numpy(), ref_i, strict=True)])
        assert recall >= 0.9, (kind, recall)
        # returned scores are exact (re-ranked from the stored rows), sorted descending
        np.testing.assert_allclose(sc.numpy(), np.take_along_axis(full, idx.numpy(), 1), rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(sc.numpy(), axis=1) <= 1e-7)
    # an IVF probe that finds fewer than k rows falls back to exact search for that query
    index.build_faiss("ivf", n_lists=64, n_probe=1, seed=0)
    idx, sc = FeatureIndex.open(tmp_path / "idx").search(queries[:3], 200, backend="faiss", n_candidates=200)
    assert np.isfinite(sc.numpy()).all()
    np.testing.assert_array_equal(idx.numpy(), _reference(train, queries[:3], 200)[0])
    # the saved FAISS index goes stale when rows are added: it is rebuilt over all rows
    index.add(queries * 3.0)
    idx, _ = FeatureIndex.open(tmp_path / "idx").search(queries, 1, backend="faiss")
    assert idx[:, 0].tolist() == list(range(2000, 2020))


def test_missing_faiss_gives_pip_command(monkeypatch, tmp_path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    index = FeatureIndex.create(tmp_path / "idx", dim=2)
    index.add(np.eye(2, dtype=np.float32))
    with pytest.raises(MissingDependencyError, match=r"pip install 'genprov\[faiss\]'"):
        index.search(np.eye(2, dtype=np.float32), 1, backend="faiss")
