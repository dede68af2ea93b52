from __future__ import annotations

import numpy as np
import pytest

from genprov.exceptions import DataError
from genprov.results import DataAttributionResult, ModelAttributionResult, ReconstructionResult


def test_data_attribution_result_round_trip(tmp_path) -> None:
    res = DataAttributionResult(
        indices=np.array([[3, 1], [0, 2]]),
        scores=np.array([[0.9, 0.1], [0.5, -0.2]]),
        soft=np.array([[0.7, 0.2], [0.6, 0.1]]),
        method="d-trak",
        config={"k": 2},
    )
    path = res.save(tmp_path / "res")
    assert path.suffix == ".npz" and path.with_suffix(".json").is_file()
    back = DataAttributionResult.load(path)
    np.testing.assert_array_equal(back.indices, res.indices)
    np.testing.assert_array_equal(back.soft, res.soft)  # type: ignore[arg-type]
    assert back.method == "d-trak" and back.config == {"k": 2} and back.k == 2


def test_model_and_reconstruction_results_round_trip(tmp_path) -> None:
    res = ModelAttributionResult(
        scores=np.array([1.0, -1.0]), verdicts=np.array([True, False]), threshold=0.0, method="flipad"
    )
    back = ModelAttributionResult.load(res.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(back.verdicts, res.verdicts)
    assert back.threshold == 0.0
    rec = ReconstructionResult(reconstructions=np.zeros((1, 1, 2, 2)), metrics={"mse": 0.5}, method="expmi")
    assert ReconstructionResult.load(rec.save(tmp_path / "r")).metrics == {"mse": 0.5}


def test_shape_errors_and_missing_files(tmp_path) -> None:
    with pytest.raises(DataError, match=r"shape \(n_queries, k\)"):
        DataAttributionResult(indices=np.zeros((2, 3)), scores=np.zeros((2, 2)), method="x")
    with pytest.raises(DataError, match="does not exist"):
        DataAttributionResult.load(tmp_path / "missing.npz")
    res = ModelAttributionResult(scores=np.zeros(1), verdicts=np.zeros(1, bool), threshold=0.0, method="x")
    path = res.save(tmp_path / "m")
    with pytest.raises(DataError, match="different result type"):
        DataAttributionResult.load(path)


def _assert_same(back: object, res: object) -> None:
    import dataclasses

    for field in dataclasses.fields(res):  # type: ignore[arg-type]
        got, want = getattr(back, field.name), getattr(res, field.name)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype, field.name
            np.testing.assert_array_equal(got, want, err_msg=field.name)
        else:
            assert got == want, field.name


@pytest.mark.parametrize(
    "res",
    [
        DataAttributionResult(
            indices=np.array([[3, 1], [0, 2]]),
            scores=np.array([[0.9, 0.1], [0.5, -0.2]]),
            soft=np.array([[0.7, 0.2], [0.6, 0.1]]),
            method="d-trak",
            config={"k": 2, "proj_dim": 32},
        ),
        ModelAttributionResult(
            scores=np.array([1.5, -1.0, 0.25]),
            verdicts=np.array([True, False, True]),
            threshold=0.125,
            method="flipad",
            config={"fnr": 0.005},
        ),
        ReconstructionResult(
            reconstructions=np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 1, 2, 2),
            metrics={"mse": 0.5},
            method="exp-mi",
        ),
    ],
    ids=lambda r: type(r).__name__,
)
def test_every_field_survives_the_round_trip(res: object, tmp_path) -> None:
    back = type(res).load(res.save(tmp_path / "res"))  # type: ignore[attr-defined]
    _assert_same(back, res)
