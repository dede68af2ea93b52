"""Tabular datasets: scikit-learn's bundled sets and CSV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch

from genprov.data import TABULAR_DATASETS, load_tabular
from genprov.exceptions import ConfigError, DataError


@pytest.mark.parametrize(
    ("name", "shape", "n_classes"), [("wine", (178, 13), 3), ("iris", (150, 4), 3), ("breast-cancer", (569, 30), 2)]
)
def test_sklearn_classification_sets(name: str, shape: tuple[int, int], n_classes: int) -> None:
    ds = load_tabular(name)
    assert tuple(ds.features.shape) == shape
    assert ds.features.dtype == torch.float32
    assert float(ds.features.min()) == -1.0
    assert float(ds.features.max()) == 1.0
    assert ds.labels is not None
    assert int(ds.labels.max()) + 1 == n_classes
    assert ds.class_names is not None
    assert len(ds.class_names) == n_classes
    assert len(ds.column_names) == shape[1]


def test_inverse_transform_recovers_original_units() -> None:
    ds = load_tabular("wine")
    original = sklearn.datasets.load_wine().data
    np.testing.assert_allclose(ds.inverse_transform(ds.features), original, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds.low, original.min(axis=0))
    torch.testing.assert_close(ds.transform(original), ds.features)
    with pytest.raises(DataError, match="13 columns"):
        ds.inverse_transform(np.zeros((2, 3)))


def test_diabetes_keeps_the_target_as_a_column() -> None:
    ds = load_tabular("diabetes")
    assert ds.labels is None
    assert ds.column_names[-1] == "progression"
    assert ds.n_features == 11
    np.testing.assert_allclose(
        ds.inverse_transform(ds.features)[:, -1], sklearn.datasets.load_diabetes().target, rtol=1e-5
    )


def test_n_seed_subset_and_fingerprint() -> None:
    a = load_tabular("iris", n=20, seed=1)
    b = load_tabular("iris", n=20, seed=1)
    c = load_tabular("iris", n=20, seed=2)
    full = load_tabular("iris")
    assert len(a) == 20
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    np.testing.assert_array_equal(a.low, full.low)  # scale comes from the whole source
    x, y = a[0]
    assert x.shape == (4,)
    assert isinstance(y, int)
    assert "TABULAR" not in repr(a)


def test_unknown_name_suggests_one() -> None:
    assert "wine" in TABULAR_DATASETS
    with pytest.raises(ConfigError, match="Did you mean 'wine'"):
        load_tabular("wina")


def test_csv_with_string_labels_and_constant_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,Label,b,const\n1,cat,10,5\n3,dog,20,5\n2,cat,15,5\n")
    ds = load_tabular(path)
    assert ds.column_names == ("a", "b", "const")
    assert ds.class_names == ("cat", "dog")
    assert ds.labels is not None
    assert ds.labels.tolist() == [0, 1, 0]
    torch.testing.assert_close(ds.features, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(ds.inverse_transform(ds.features), [[1, 10, 5], [3, 20, 5], [2, 15, 5]])


def test_csv_integer_labels_and_no_labels(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text("x,label\n0.5,2\n1.5,0\n")
    labelled = load_tabular(str(tmp_path / "i.csv"))
    assert labelled.labels is not None
    assert labelled.labels.tolist() == [2, 0]
    assert labelled.class_names is None
    (tmp_path / "u.csv").write_text("x,y\n0,1\n1,0\n\n")
    assert load_tabular(tmp_path / "u.csv").labels is None


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("a,b\n1,2\n3,nan\n", r"line 3, column 'b' is 'nan'"),
        ("a,b\n1,\n", r"line 2, column 'b' is empty"),
        ("a,b\n1,red\n", r"line 2, column 'b': 'red' is not a number"),
        ("a,b\n1,2,3\n", r"line 2 has 3 fields"),
        ("a,b\n", r"at least one data row"),
        ("label\n1\n", r"no feature columns"),
        ("a,label\n1,\n", r"line 2 has an empty 'label'"),
    ],
)
def test_csv_errors_name_line_and_column(tmp_path: Path, body: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=pattern):
        load_tabular(path)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tabular(tmp_path / "none.csv")
