"""Final-layer inversion: operators (adjoints, norms), activation inverses, FISTA vs scikit-learn's Lasso."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

from genprov.attribution.model.inversion import (
    ACTIVATIONS,
    AutogradOperator,
    Conv2dOperator,
    ConvTranspose2dOperator,
    DenseOperator,
    SparseOperator,
    activation,
    fista_lasso,
    lasso_objective,
    operator_for,
    soft_threshold,
)
from genprov.exceptions import ConfigError, DataError

LAYERS = [
    pytest.param(nn.Conv2d(3, 2, 3, stride=2, padding=1), (3, 9, 9), Conv2dOperator, id="conv-stride2"),
    pytest.param(nn.Conv2d(2, 4, 3, padding=1, groups=2), (2, 5, 5), Conv2dOperator, id="conv-groups"),
    pytest.param(nn.ConvTranspose2d(4, 2, 4, 2, 1), (4, 5, 5), ConvTranspose2dOperator, id="convT-dcgan"),
    pytest.param(
        nn.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1), (4, 5, 5), ConvTranspose2dOperator, id="convT-op"
    ),
    pytest.param(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"), (3, 6, 6), AutogradOperator, id="conv-reflect"),
    pytest.param(nn.Conv2d(3, 2, 3, padding="same"), (3, 6, 6), AutogradOperator, id="conv-same"),
    pytest.param(nn.Linear(7, 5), (7,), DenseOperator, id="linear"),
    pytest.param(nn.Linear(7, 5), (3, 7), DenseOperator, id="linear-tokens"),
]


def _seeded(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in layer.parameters():
        nn.init.normal_(p)
    return layer.double()


@pytest.mark.parametrize(("layer", "in_shape", "kind"), LAYERS)
def test_operator_forward_and_adjoint(layer: nn.Module, in_shape: tuple[int, ...], kind: type) -> None:
    layer = _seeded(layer)
    op = operator_for(layer, in_shape, sparse=False)
    assert isinstance(op, kind)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, *in_shape, dtype=torch.float64, generator=gen)
    y = torch.randn(3, *op.out_shape, dtype=torch.float64, generator=gen)
    bias = op.bias if op.bias is not None else 0.0
    torch.testing.assert_close(op.matvec(x) + bias, layer(x).detach())
    # <A x, y> = <x, A^T y>
    lhs = (op.matvec(x) * y).sum()
    rhs = (x * op.rmatvec(y)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10, abs=1e-10)
    assert op.rmatvec(y).shape == x.shape


@pytest.mark.parametrize(("layer", "in_shape", "kind"), LAYERS[:4])
def test_power_iteration_matches_the_exact_operator_norm(
    layer: nn.Module, in_shape: tuple[int, ...], kind: type
) -> None:
    op = operator_for(_seeded(layer), in_shape, sparse=False)
    exact = float(torch.linalg.matrix_norm(op.to_matrix(), 2) ** 2)
    estimate = op.squared_norm(n_iter=500)
    assert estimate <= exact * (1 + 1e-9)
    assert estimate == pytest.approx(exact, rel=1e-2)


@pytest.mark.parametrize(("layer", "in_shape", "kind"), LAYERS[:6])
def test_sparse_operator_equals_the_layer_operator(layer: nn.Module, in_shape: tuple[int, ...], kind: type) -> None:
    layer = _seeded(layer)
    op, sparse = operator_for(layer, in_shape, sparse=False), operator_for(layer, in_shape)
    assert isinstance(sparse, SparseOperator)
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    y = torch.randn(3, *op.out_shape, dtype=torch.float64)
    torch.testing.assert_close(sparse.matvec(x), op.matvec(x))
    torch.testing.assert_close(sparse.rmatvec(y), op.rmatvec(y))
    torch.testing.assert_close(sparse.matvec(x.float()), op.matvec(x).float(), rtol=1e-4, atol=1e-5)


def test_to_matrix_agrees_with_matvec() -> None:
    op = operator_for(_seeded(nn.ConvTranspose2d(2, 1, 4, 2, 1)), (2, 3, 3))
    z = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(z).flatten(1), z.flatten(1) @ op.to_matrix().T)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 3.0])
def test_fista_matches_sklearn_lasso(alpha: float) -> None:
    gen = torch.Generator().manual_seed(2)
    m, k = 30, 60
    a = torch.randn(m, k, dtype=torch.float64, generator=gen)
    b = torch.randn(5, m, dtype=torch.float64, generator=gen)
    op = DenseOperator(a)
    sol = fista_lasso(op, b, alpha, max_iter=50_000, tol=1e-13)
    ours = lasso_objective(op, b, sol.solution, alpha)
    for i in range(len(b)):
        # sklearn: 1/(2 m) ||b - A w||^2 + a' ||w||_1  ==  (ours) / m  with  a' = alpha / m
        ref = Lasso(alpha=alpha / m, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(a.numpy(), b[i].numpy())
        theirs = float(lasso_objective(op, b[i : i + 1], torch.from_numpy(ref.coef_)[None], alpha)[0])
        assert abs(float(ours[i]) - theirs) <= 1e-6 * abs(theirs)


def test_fista_with_restart_needs_fewer_iterations_for_the_same_minimum() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(40, 80, dtype=torch.float64, generator=gen)
    b = torch.randn(4, 40, dtype=torch.float64, generator=gen)
    op = DenseOperator(a)
    fast = fista_lasso(op, b, 0.1, max_iter=20_000, tol=1e-10, restart=True)
    plain = fista_lasso(op, b, 0.1, max_iter=20_000, tol=1e-10, restart=False)
    assert bool(fast.converged.all())
    torch.testing.assert_close(lasso_objective(op, b, fast.solution, 0.1), lasso_objective(op, b, plain.solution, 0.1))
    assert int(fast.n_iter.sum()) < int(plain.n_iter.sum())


def test_fista_recovers_a_sparse_vector_compressed_sensing() -> None:
    gen = torch.Generator().manual_seed(4)
    m, k = 40, 100
    a = torch.randn(m, k, dtype=torch.float64, generator=gen) / m**0.5
    truth = torch.zeros(3, k, dtype=torch.float64)
    for i in range(3):
        idx = torch.randperm(k, generator=gen)[:4]
        truth[i, idx] = torch.randn(4, dtype=torch.float64, generator=gen).sign() * (
            1 + torch.rand(4, dtype=torch.float64, generator=gen)
        )
    b = truth @ a.T
    sol = fista_lasso(DenseOperator(a), b, 1e-4, max_iter=50_000, tol=1e-12)
    assert float((sol.solution - truth).norm() / truth.norm()) < 1e-3


def test_batched_fista_equals_one_by_one() -> None:
    gen = torch.Generator().manual_seed(5)
    op = operator_for(_seeded(nn.ConvTranspose2d(3, 1, 4, 2, 1)), (3, 4, 4))
    b = torch.randn(4, *op.out_shape, dtype=torch.float64, generator=gen)
    big_l = op.squared_norm() * 1.02
    both = fista_lasso(op, b, 0.01, lipschitz=big_l, max_iter=300, tol=1e-6).solution
    single = torch.cat(
        [fista_lasso(op, b[i : i + 1], 0.01, lipschitz=big_l, max_iter=300, tol=1e-6).solution for i in range(4)]
    )
    torch.testing.assert_close(both, single)


def test_fista_zero_is_the_solution_for_large_alpha() -> None:
    a = torch.eye(3, dtype=torch.float64)
    b = torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64)
    sol = fista_lasso(DenseOperator(a), b, 1.0)
    assert bool((sol.solution == 0).all())
    assert bool(sol.converged.all())


def test_soft_threshold() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    torch.testing.assert_close(soft_threshold(x, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_inverse(name: str) -> None:
    act = activation(name)
    pre = torch.linspace(-3, 3, 25)
    torch.testing.assert_close(act.inverse(act.forward(pre)), pre, rtol=1e-3, atol=1e-3)


def test_activation_inverse_is_finite_on_saturated_values() -> None:
    assert bool(torch.isfinite(activation("tanh").inverse(torch.tensor([-1.0, 1.0]))).all())
    assert bool(torch.isfinite(activation("sigmoid").inverse(torch.tensor([0.0, 1.0]))).all())


def test_errors() -> None:
    with pytest.raises(ConfigError, match=r"Unknown output activation 'tahn'.*Did you mean 'tanh'"):
        activation("tahn")
    with pytest.raises(ConfigError, match="cannot invert a final layer of type Conv1d"):
        operator_for(nn.Conv1d(2, 2, 3), (2, 8))
    with pytest.raises(DataError, match=r"takes \(4, H, W\) inputs"):
        operator_for(nn.ConvTranspose2d(4, 1, 4, 2, 1), (3, 4, 4))
    op = DenseOperator(torch.eye(3))
    with pytest.raises(DataError, match="per-sample shape"):
        fista_lasso(op, torch.zeros(2, 4), 0.1)
    with pytest.raises(ConfigError, match="alpha"):
        fista_lasso(op, torch.zeros(2, 3), -1.0)


def test_sklearn_alpha_conversion_documented() -> None:
    # one tiny explicit problem: the minimisers coincide when alpha_sklearn = alpha / m
    a = np.array([[1.0, 0.5], [0.2, 1.0], [0.3, 0.1]])
    b = np.array([1.0, -0.5, 0.2])
    ref = Lasso(alpha=0.1 / 3, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(a, b).coef_
    ours = fista_lasso(DenseOperator(torch.from_numpy(a)), torch.from_numpy(b)[None], 0.1, max_iter=100_000, tol=1e-14)
    np.testing.assert_allclose(ours.solution[0].numpy(), ref, atol=1e-7)
