"""Block-wise TRAK scoring: exact top-k (ties included) without the full matrix, the memmap output, and the
kernel cache in the store."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.attribution.data.base import merge_top_k, top_k
from genprov.attribution.data.trak import SCORINGS, TRAKAttributor, TRAKConfig
from genprov.exceptions import ConfigError
from genprov.storage import FeatureStore
from genprov.utils.seeding import numpy_rng


def _features(n: int, k: int, seed: int = 0) -> np.ndarray:
    return numpy_rng(seed, "blockwise").standard_normal((n, k)).astype(np.float32)


def _attributor(**config: object) -> TRAKAttributor:
    return TRAKAttributor(torch.nn.Linear(1, 1), config=TRAKConfig(**config))  # type: ignore[arg-type]


def _full_order(scores: np.ndarray, k: int, negative: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: top_k of the full matrix, and the reverse of its stable order for the negatives."""
    full = torch.from_numpy(scores)
    positive = top_k(full, k)[0].numpy()
    order = torch.sort(full, dim=1, descending=True, stable=True).indices.flip(1)
    return positive, order[:, :negative].numpy()


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize(("n", "k"), [(23, 6), (9, 20)], ids=["primal", "dual"])
@pytest.mark.parametrize(("query_block", "train_block"), [(2, 5), (4, 1), (100, 7)])
def test_block_top_k_equals_the_full_matrix_top_k(scoring, n, k, query_block, train_block) -> None:
    attributor = _attributor(scoring=scoring, relative_damping=0.3).fit_features(_features(n, k))
    phi_q = _features(5, k, seed=1)
    full = attributor.scores_from_features(phi_q).numpy()
    top = attributor.top_k_scores(phi_q, 4, negative=3, query_block=query_block, train_block=train_block)
    positive, negative = _full_order(full, 4, 3)
    np.testing.assert_array_equal(top.indices, positive)
    np.testing.assert_array_equal(top.negative_indices, negative)
    np.testing.assert_allclose(top.scores, np.take_along_axis(full, positive, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(top.negative_scores, np.take_along_axis(full, negative, 1), rtol=1e-12, atol=1e-14)


def _tied(dual: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Features whose scores are exact in float64 under every scoring, with many exact ties.

    Primal: 12 rows e_{j mod 4} (Phi^T Phi = 3 I, lambda = 1: the factor is 2 I). Dual: 5 rows e_0..e_4 of 8
    dimensions (Phi Phi^T = I, lambda = 3). Queries are small integers, several equal coordinates.
    """
    k = 8 if dual else 4
    n = 5 if dual else 12
    phi = np.zeros((n, k), dtype=np.float32)
    phi[np.arange(n), np.arange(n) % k] = 1.0
    queries = np.array([[2, 2, 1, 0, 0, 2, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1], [0, 3, 3, -1, 3, 0, 0, 0]], np.float32)
    return phi, queries[:, :k], 3.0 if dual else 1.0


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("dual", [False, True], ids=["primal", "dual"])
def test_ties_keep_the_lower_index_first_as_top_k_does(scoring, dual) -> None:
    phi, phi_q, damping = _tied(dual)
    attributor = _attributor(scoring=scoring, damping=damping).fit_features(phi)
    full = attributor.scores_from_features(phi_q).numpy()
    n = len(phi)
    for query_block, train_block in [(1, 1), (2, 5), (3, n)]:
        top = attributor.top_k_scores(phi_q, n - 1, negative=n - 2, query_block=query_block, train_block=train_block)
        positive, negative = _full_order(full, n - 1, n - 2)
        np.testing.assert_array_equal(top.indices, positive)
        np.testing.assert_array_equal(top.negative_indices, negative)
        np.testing.assert_array_equal(top.scores, np.take_along_axis(full, positive, 1))
    # the all-ones query ties every example: lower index first, and the negatives are the reverse
    assert top.indices[1].tolist() == list(range(n - 1))
    assert top.negative_indices[1].tolist() == list(range(n - 1, 1, -1))  # type: ignore[union-attr]


def test_merge_top_k_is_exact_whatever_the_candidates_order() -> None:
    values = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0]])
    indices = np.array([[7, 5, 2, 9, 8, 1]])
    for perm in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 4, 1, 5, 3]):
        got_v, got_i = merge_top_k(values[:, perm], indices[:, perm], 4)
        assert got_i.tolist() == [[2, 5, 8, 9]] and got_v.tolist() == [[3.0, 3.0, 3.0, 2.0]]
        low_v, low_i = merge_top_k(values[:, perm], indices[:, perm], 3, lowest=True)
        assert low_i.tolist() == [[1, 7, 9]] and low_v.tolist() == [[0.0, 1.0, 2.0]]


def test_attribute_equals_the_result_of_the_full_float32_scores(monkeypatch) -> None:
    attributor = _attributor(scoring="trak").fit_features(_features(40, 6))
    phi_q = _features(3, 6, seed=2)
    monkeypatch.setattr(attributor, "featurize_queries", lambda queries: torch.from_numpy(phi_q))
    expected = attributor.result_from_scores(attributor.scores_from_features(phi_q).to(torch.float32), k=5)
    got = attributor.attribute(torch.zeros(3, 1, 4, 4), k=5)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.scores, expected.scores)
    with pytest.raises(ConfigError, match="k must be an integer in"):
        attributor.attribute(torch.zeros(3, 1, 4, 4), k=41)


@pytest.mark.parametrize("scoring", ["trak", "grad-cos"])
def test_the_memmap_output_equals_scores_from_features(tmp_path, scoring) -> None:
    attributor = _attributor(scoring=scoring).fit_features(_features(30, 5))
    phi_q = _features(7, 5, seed=3)
    full = attributor.scores_from_features(phi_q).numpy()
    attributor.top_k_scores(phi_q, 3, out=tmp_path / "scores.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), full)  # default blocks: the same arithmetic
    attributor.top_k_scores(phi_q, 3, query_block=3, train_block=4, out=tmp_path / "small.npy", dtype="float32")
    small = np.load(tmp_path / "small.npy")
    assert small.dtype == np.float32
    np.testing.assert_allclose(small, full.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npy", "small.npy"]  # no temporary file left


def test_a_failed_scoring_leaves_no_score_file(tmp_path, monkeypatch) -> None:
    attributor = _attributor().fit_features(_features(30, 5))
    blocks = attributor._score_blocks

    def failing(*args: object):
        for i, block in enumerate(blocks(*args)):  # type: ignore[arg-type]
            if i == 2:
                raise RuntimeError("killed mid-way")
            yield block

    monkeypatch.setattr(attributor, "_score_blocks", failing)
    with pytest.raises(RuntimeError, match="killed"):
        attributor.top_k_scores(_features(4, 5), 2, query_block=2, train_block=4, out=tmp_path / "scores.npy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scoring", SCORINGS)
def test_no_query_by_train_matrix_is_allocated_without_out(monkeypatch, scoring) -> None:
    n_q, n, k = 64, 4000, 8
    attributor = _attributor(scoring=scoring).fit_features(_features(n, k))
    phi_q = _features(n_q, k, seed=4)
    full_bytes = n_q * n * 8

    def refuse(*args: object) -> None:
        raise AssertionError("the full-matrix path was called")

    monkeypatch.setattr(attributor, "_scores_array", refuse)
    monkeypatch.setattr(attributor, "_train_product", refuse)  # the primal blocks never build (m, n) products
    tracemalloc.start()
    try:
        np.ones((n_q, n)).sum()  # the instrument sees numpy's allocations: this one is a full matrix
        assert tracemalloc.get_traced_memory()[1] >= full_bytes
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        top = attributor.top_k_scores(phi_q, 10, negative=5, query_block=8, train_block=100)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert top.indices.shape == (n_q, 10)
    assert peak < full_bytes / 8, f"peak {peak} bytes for a {full_bytes}-byte score matrix"


def test_block_sizes_and_dtype_are_checked() -> None:
    attributor = _attributor().fit_features(_features(10, 3))
    phi_q = _features(2, 3)
    with pytest.raises(ConfigError, match="query_block"):
        attributor.top_k_scores(phi_q, 2, query_block=0)
    with pytest.raises(ConfigError, match="negative must be an integer in"):
        attributor.top_k_scores(phi_q, 2, negative=11)
    with pytest.raises(ConfigError, match="dtype"):
        attributor.top_k_scores(phi_q, 2, dtype="float16")


# ---------------------------------------------------------------------------------------------- kernel cache


def _store(path: Path, features: np.ndarray) -> FeatureStore:
    fs = FeatureStore.create(path, n_rows=len(features), arrays={"features": features.shape[1]}, spec={"s": 1})
    fs.write_shard(0, {"features": features})
    return fs


def _reopened(fs: FeatureStore, *, write: bool = False, **config: object) -> TRAKAttributor:
    """As ``fit`` (``write``: it caches the kernel) and ``from_pretrained`` (reads only) do: the store, then its
    features."""
    attributor = _attributor(**config)
    attributor.store_ = FeatureStore.open(fs.path)
    return attributor.fit_features(attributor.store_.read("features"), write_cache=write)


@pytest.fixture
def counts(monkeypatch) -> dict[str, int]:
    counted = {"_gram": 0, "_cholesky": 0, "_self_influence": 0, "_sq_norms": 0}
    for name in counted:
        original = getattr(TRAKAttributor, name)

        def wrapper(self, *args, _original=original, _name=name):  # type: ignore[no-untyped-def]
            counted[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(TRAKAttributor, name, wrapper)
    return counted


@pytest.mark.parametrize(("n", "k"), [(40, 6), (6, 12)], ids=["primal", "dual"])
def test_the_kernel_factor_is_cached_in_the_store_and_reused(tmp_path, counts, n, k) -> None:
    features, phi_q = _features(n, k), _features(3, k, seed=5)
    fs = _store(tmp_path / "store", features)
    _reopened(fs, scoring="relative-if", damping=0.5)
    assert not (tmp_path / "store" / "cache").exists()  # reopening (a read) never writes
    counts.update(dict.fromkeys(counts, 0))
    first = _reopened(fs, write=True, scoring="relative-if", damping=0.5)
    assert counts == {"_gram": 1, "_cholesky": 1, "_self_influence": 1, "_sq_norms": 1}
    assert (tmp_path / "store" / "cache").is_dir()
    again = _reopened(fs, scoring="relative-if", damping=0.5)
    assert counts == {"_gram": 1, "_cholesky": 1, "_self_influence": 1, "_sq_norms": 1}  # nothing recomputed
    np.testing.assert_array_equal(again.scores_from_features(phi_q), first.scores_from_features(phi_q))
    other = _reopened(fs, scoring="relative-if", damping=2.0)  # another lambda: the kernel is kept, not the factor
    assert counts == {"_gram": 1, "_cholesky": 2, "_self_influence": 2, "_sq_norms": 1}
    reference = _attributor(scoring="relative-if", damping=2.0).fit_features(np.array(features))
    np.testing.assert_allclose(other.scores_from_features(phi_q), reference.scores_from_features(phi_q), rtol=1e-10)


def test_a_cache_of_other_features_is_ignored_and_rewritten(tmp_path, counts) -> None:
    first = _store(tmp_path / "a", _features(40, 6))
    _reopened(first, write=True, damping=0.5)
    changed = _features(40, 6, seed=9)
    second = _store(tmp_path / "b", changed)
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")  # a stale cache beside other features
    got = _reopened(second, write=True, damping=0.5)
    assert counts["_gram"] == 2 and counts["_cholesky"] == 2
    reference = _attributor(damping=0.5).fit_features(changed)
    phi_q = _features(2, 6, seed=1)
    np.testing.assert_allclose(got.scores_from_features(phi_q), reference.scores_from_features(phi_q), rtol=1e-10)
    before = dict(counts)
    _reopened(second, damping=0.5)  # the rewritten cache now serves the second store
    assert counts == before


def test_a_corrupted_cache_is_ignored_and_features_from_elsewhere_are_never_cached(tmp_path, counts) -> None:
    fs = _store(tmp_path / "s", _features(20, 4))
    _reopened(fs, write=True)
    for file in (tmp_path / "s" / "cache").iterdir():
        data = bytearray(file.read_bytes())
        data[-1] ^= 0xFF
        file.write_bytes(bytes(data))
    _reopened(fs, write=True)
    assert counts["_gram"] == 2
    attributor = _reopened(fs)
    assert counts["_gram"] == 2  # rewritten by the previous open
    attributor.fit_features(_features(20, 4, seed=3))  # the store is still set, but these are not its features
    assert counts["_gram"] == 3
