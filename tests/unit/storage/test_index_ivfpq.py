"""Compressed FAISS search (IVF-PQ + exact re-ranking): recall, exact scores, determinism, rebuilds, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.exceptions import ConfigError, DataError
from genprov.storage import INDEX_FILE, FeatureIndex

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)
torch.set_num_threads(1)

N, DIM, K = 3000, 64, 10


def _clustered(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3,000 rows around 50 centres (real embeddings are clustered) and 20 queries near random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 50, N)] + 0.3 * rng.standard_normal((N, DIM)).astype(np.float32)
    queries = centres[rng.integers(0, 50, 20)] + 0.3 * rng.standard_normal((20, DIM)).astype(np.float32)
    return rows, queries


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _clustered(0)


def _index(folder: Path, rows: np.ndarray) -> FeatureIndex:
    index = FeatureIndex.create(folder, dim=DIM)
    index.add(rows)
    return index


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def test_recall_exact_scores_and_compression(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = data
    index = _index(tmp_path / "idx", rows)
    built = index.build_faiss("ivfpq", seed=0)
    assert built.nlist == int(4 * np.sqrt(N)) and built.pq.M == DIM // 8 and built.pq.nbits == 8
    record = index.meta["faiss"]
    assert record["kind"] == "ivfpq" and record["n_rows"] == N and (tmp_path / "idx" / "faiss-ivfpq.index").is_file()
    assert record["bytes"] < 0.3 * N * DIM * 4  # codes + ids + coarse centroids vs float32 features
    truth_i, _ = index.search(queries, K)
    full = index.scores(queries).numpy()
    reopened = FeatureIndex.open(tmp_path / "idx")
    idx, sc = reopened.search(queries, K, backend="faiss", n_probe=16, n_candidates=100)
    assert _recall(idx, truth_i) >= 0.95
    # returned scores are exact (re-scored from the memmap) and sorted
    np.testing.assert_allclose(sc.numpy(), np.take_along_axis(full, idx.numpy(), 1), rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(sc.numpy(), axis=1) <= 0)
    # one list visited per query finds less (n_probe is a search setting, not a rebuild)
    few, _ = reopened.search(queries, K, backend="faiss", n_probe=1, n_candidates=100)
    assert _recall(few, truth_i) < _recall(idx, truth_i)
    # every list visited and every row re-ranked: exactly the exact search
    every, every_s = reopened.search(queries, K, backend="faiss", n_probe=10**6, n_candidates=N)
    assert torch.equal(every, truth_i)
    np.testing.assert_allclose(every_s.numpy(), np.take_along_axis(full, truth_i.numpy(), 1), rtol=1e-6)


def test_two_builds_with_one_seed_are_identical(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = data
    files = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _index(tmp_path / name, rows).build_faiss("ivfpq", n_lists=32, seed=seed)
        files.append((tmp_path / name / "faiss-ivfpq.index").read_bytes())
    assert files[0] == files[1] and files[0] != files[2]
    a, b = (FeatureIndex.open(tmp_path / n).search(queries, K, backend="faiss", n_probe=2) for n in "ab")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rebuilt_when_rows_or_settings_change(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, queries = data
    index = _index(tmp_path / "idx", rows)
    index.build_faiss("ivfpq", n_lists=16, seed=0)
    # the same settings and rows: the saved index is loaded, not trained again
    with monkeypatch.context() as patch:
        patch.setattr(FeatureIndex, "_new_faiss", lambda *a: pytest.fail("rebuilt an up-to-date index"))
        assert index.build_faiss("ivfpq", n_lists=16, seed=0, n_probe=4).nprobe == 4
    # a changed setting rebuilds and records it
    assert index.build_faiss("ivfpq", n_lists=32, seed=0).nlist == 32
    assert index.meta["faiss"]["settings"]["n_lists"] == 32
    # rows added since: a search builds a current index in memory with the saved settings, writing nothing
    index.add(queries * 3.0)
    meta = (tmp_path / "idx" / INDEX_FILE).read_text()
    found, _ = FeatureIndex.open(tmp_path / "idx").search(queries, 1, backend="faiss", n_probe=32)
    assert found[:, 0].tolist() == list(range(N, N + 20))
    assert (tmp_path / "idx" / INDEX_FILE).read_text() == meta
    assert index.build_faiss("ivfpq", n_lists=32, seed=0).ntotal == N + 20
    assert index.meta["faiss"]["n_rows"] == N + 20


def test_a_corrupted_index_file_is_refused_then_rebuilt(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = data
    index = _index(tmp_path / "idx", rows)
    index.build_faiss("ivfpq", n_lists=16, seed=0)
    file = tmp_path / "idx" / "faiss-ivfpq.index"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"faiss-ivfpq\.index is not a readable FAISS index.*delete it and rebuild"):
        FeatureIndex.open(tmp_path / "idx").search(queries, K, backend="faiss")
    reopened = FeatureIndex.open(tmp_path / "idx")
    reopened.build_faiss("ivfpq", n_lists=16, seed=0)  # the same settings, but unreadable: built again
    found, _ = FeatureIndex.open(tmp_path / "idx").search(queries, K, backend="faiss", n_probe=16, n_candidates=N)
    assert torch.equal(found, index.search(queries, K)[0])


def test_bad_ivfpq_settings_are_named(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = data
    index = _index(tmp_path / "idx", rows)
    with pytest.raises(ConfigError, match="pq_m must divide the feature dimension 64; got 7"):
        index.build_faiss("ivfpq", pq_m=7)
    with pytest.raises(ConfigError, match="n_lists must be a positive integer"):
        index.build_faiss("ivfpq", n_lists=0)
    with pytest.raises(ConfigError, match=r"n_probe applies to the IVF kinds.*'hnsw'"):
        index.search(queries, K, backend="faiss", kind="hnsw", n_probe=4)
    small = _index(tmp_path / "small", rows[:100])
    with pytest.raises(ConfigError, match=r"needs at least 256 rows.*holds 100"):
        small.build_faiss("ivfpq")


@pytest.mark.parametrize(
    ("kind", "k", "expected"), [("ivfpq", 10, 1000), ("ivfpq", 20, 2000), ("hnsw", 10, 64), ("ivf", 20, 80)]
)
def test_default_rerank_depth_is_deeper_for_compressed_codes(
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    k: int,
    expected: int,
) -> None:
    """Without n_candidates, IVF-PQ re-ranks max(100 k, 1000) FAISS candidates (PQ codes cannot order near-ties),
    the uncompressed kinds max(4 k, 64)."""
    rows, queries = data
    index = _index(tmp_path / "idx", rows)
    index.build_faiss(kind, seed=0)
    asked: list[int] = []
    original = FeatureIndex._faiss_index

    class Recording:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def search(self, x: np.ndarray, m: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
            asked.append(m)
            return self.inner.search(x, m, params=params)  # type: ignore[attr-defined]

    def recording(self: FeatureIndex, kind: str | None) -> tuple[object, str]:
        found, resolved = original(self, kind)
        return Recording(found), resolved

    monkeypatch.setattr(FeatureIndex, "_faiss_index", recording)
    reopened = FeatureIndex.open(tmp_path / "idx")
    found, _ = reopened.search(queries, k, backend="faiss")
    assert asked == [expected] and found.shape == (len(queries), k)
    asked.clear()
    reopened.search(queries, k, backend="faiss", n_candidates=100)  # an explicit depth wins
    assert asked == [100]
