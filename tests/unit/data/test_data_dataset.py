"""ImageDataset, splits and random subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genprov.data import ImageDataset, random_subsets, split_indices
from genprov.exceptions import ConfigError, DataError


def _toy(n: int = 6, labels: bool = True) -> ImageDataset:
    images = torch.linspace(-1, 1, n * 2 * 4 * 4).reshape(n, 2, 4, 4)
    return ImageDataset(images, torch.arange(n) % 3 if labels else None, "toy", ("a", "b", "c") if labels else None)


def test_image_dataset_basics() -> None:
    ds = _toy()
    assert len(ds) == 6
    assert ds.n_channels == 2
    assert ds.image_size == 4
    assert ds.n_classes == 3
    x, y = ds[4]
    assert x.shape == (2, 4, 4)
    assert y == 1
    assert isinstance(y, int)
    unlabelled = _toy(labels=False)
    assert unlabelled[0][1] == -1
    assert unlabelled.n_classes is None
    assert not unlabelled.has_labels
    assert "toy" in repr(ds)
    assert "n=6" in repr(ds)


def test_image_dataset_works_with_a_dataloader() -> None:
    xb, yb = next(iter(DataLoader(_toy(), batch_size=4)))
    assert xb.shape == (4, 2, 4, 4)
    assert yb.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("index", [[5, 0, 2], np.array([5, 0, 2]), torch.tensor([5, 0, 2]), range(5, -1, -5)])
def test_subset_accepts_sequences_arrays_and_tensors(index: object) -> None:
    ds = _toy()
    sub = ds.subset(index)  # type: ignore[arg-type]
    expected = [int(i) for i in index]  # type: ignore[attr-defined]
    assert torch.equal(sub.images, ds.images[expected])
    assert sub.labels is not None
    assert sub.labels.tolist() == [e % 3 for e in expected]
    assert sub.name == ds.name
    assert sub.class_names == ds.class_names


def test_subset_rejects_bad_indices() -> None:
    with pytest.raises(DataError, match=r"\[0, 6\)"):
        _toy().subset([0, 6])
    with pytest.raises(DataError, match="integers"):
        _toy().subset(np.array([0.5]))


def test_fingerprint_is_stable_and_content_sensitive() -> None:
    a, b = _toy(), _toy()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)
    b.images[0, 0, 0, 0] = 0.123
    assert a.fingerprint() != b.fingerprint()
    relabelled = ImageDataset(a.images, a.labels.flip(0) if a.labels is not None else None, "other")
    assert relabelled.fingerprint() != a.fingerprint()
    assert _toy(labels=False).fingerprint() != a.fingerprint()


def test_constructor_checks_its_input() -> None:
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ImageDataset(torch.zeros(2, 4, 4), None, "flat")
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        ImageDataset(torch.full((2, 1, 4, 4), 3.0), None, "bright")
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        ImageDataset(torch.full((2, 1, 4, 4), float("nan")), None, "nan")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64), "short")
    with pytest.raises(DataError, match="integers"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), "float labels")
    assert ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int32), "i32").labels.dtype == torch.int64  # type: ignore[union-attr]


def test_split_indices_disjoint_covering_deterministic() -> None:
    parts = split_indices(103, [0.7, 0.2, 0.1], seed=4)
    assert [len(p) for p in parts] == [72, 21, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    again = split_indices(103, [0.7, 0.2, 0.1], seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    other = split_indices(103, [0.7, 0.2, 0.1], seed=5)
    assert not np.array_equal(parts[1], other[1])
    assert all(np.all(np.diff(p) > 0) and p.dtype == np.int64 for p in parts)


def test_split_indices_partial_and_invalid() -> None:
    (half,) = split_indices(10, [0.5], seed=0)
    assert len(half) == 5
    with pytest.raises(ConfigError, match="at most 1"):
        split_indices(10, [0.6, 0.6], seed=0)
    with pytest.raises(ConfigError, match="non-negative"):
        split_indices(10, [-0.1, 0.5], seed=0)
    with pytest.raises(ConfigError, match="n must be"):
        split_indices(-1, [0.5], seed=0)


def test_random_subsets_shape_sorted_and_stable_when_growing() -> None:
    five = random_subsets(50, 5, 0.3, seed=7)
    assert five.shape == (5, 15)
    assert five.dtype == np.int64
    assert all(len(set(row)) == 15 and np.all(np.diff(row) > 0) and row.max() < 50 for row in five)
    eight = random_subsets(50, 8, 0.3, seed=7)
    np.testing.assert_array_equal(eight[:5], five)
    assert not np.array_equal(random_subsets(50, 5, 0.3, seed=8), five)
    assert len({tuple(r) for r in eight}) == 8
    with pytest.raises(ConfigError, match="fraction"):
        random_subsets(50, 5, 1.5, seed=0)
    with pytest.raises(ConfigError, match="n_subsets"):
        random_subsets(50, 0, 0.5, seed=0)
    with pytest.raises(ConfigError, match="at least 1"):
        random_subsets(3, 2, 0.1, seed=0)
