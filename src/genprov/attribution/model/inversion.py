"""Final-layer inversion as a lasso: linear operators, activation inverses and a batched FISTA solver.

FLIPAD (Laszkiewicz et al., ICML 2024, Sec. 3.2, Theorem 3.3) writes a generator's output as
``x = act(W z + b)`` with ``W`` its last linear, convolution or transposed-convolution layer and ``z`` the
penultimate activation. Given an image ``x``, the target ``y = act^-1(x) - b`` is a linear image of ``z``
and ``z`` is recovered as ``z_bar + d`` where ``z_bar`` (the anchor) is the mean penultimate activation of
the owner's samples and ``d`` solves the lasso

    min_d  1/2 ||y - W z_bar - W d||_2^2 + alpha ||d||_1        (per sample, sums over all entries).

This module provides:

* :class:`LinearOperator` -- one matrix-free abstraction of ``W`` (forward and adjoint, batched) with
  implementations for ``nn.Linear`` (:class:`DenseOperator`), ``nn.Conv2d`` (:class:`Conv2dOperator`,
  adjoint = transposed convolution), ``nn.ConvTranspose2d`` (:class:`ConvTranspose2dOperator`, adjoint =
  convolution) and any other linear map (:class:`AutogradOperator`, adjoint by autograd); the operator
  norm comes from a seeded power iteration. Small convolutions are materialised as a sparse CSR matrix
  (:class:`SparseOperator`), several times faster on a CPU than the convolution calls.
* :data:`ACTIVATIONS` -- output activations and their inverses (``tanh`` -> ``atanh`` of the input clipped
  to ``±(1 - 1e-4)``; ``sigmoid`` -> ``logit`` of the input clipped to ``[1e-4, 1 - 1e-4]``; ``identity``).
* :func:`fista_lasso` -- FISTA (Beck & Teboulle, 2009) with step ``1/L``, ``L = ||W||_2^2``, optional
  gradient-based adaptive restart (O'Donoghue & Candès, 2015), a per-sample relative tolerance and
  an iteration cap; converged samples leave the working batch.

Note on scaling: scikit-learn's ``Lasso`` minimises ``1/(2 m) ||y - A w||^2 + a ||w||_1`` with ``m`` the
number of rows of ``A``; the same problem here has ``alpha = a * m``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from genprov.config import did_you_mean
from genprov.exceptions import ConfigError, DataError
from genprov.utils.seeding import torch_generator

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AutogradOperator",
    "Conv2dOperator",
    "ConvTranspose2dOperator",
    "DenseOperator",
    "LassoSolution",
    "LinearOperator",
    "SparseOperator",
    "activation",
    "fista_lasso",
    "lasso_objective",
    "operator_for",
    "soft_threshold",
]

Shape = tuple[int, ...]


# ------------------------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class Activation:
    """An invertible output activation.

    Attributes:
        name: ``"tanh"``, ``"sigmoid"`` or ``"identity"``.
        forward: Elementwise map applied to the final layer's output.
        inverse: Its inverse on the clipped input range (clipping keeps it finite on saturated pixels).
        value_range: Range of the outputs (``None``: unbounded).
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    value_range: tuple[float, float] | None


_CLIP = 1e-4


def _identity(x: Tensor) -> Tensor:
    return x


def _atanh(x: Tensor) -> Tensor:
    return torch.atanh(x.clamp(-1.0 + _CLIP, 1.0 - _CLIP))


def _logit(x: Tensor) -> Tensor:
    return torch.logit(x.clamp(_CLIP, 1.0 - _CLIP))


#: Supported output activations by name.
ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh", torch.tanh, _atanh, (-1.0, 1.0)),
        Activation("sigmoid", torch.sigmoid, _logit, (0.0, 1.0)),
        Activation("identity", _identity, _identity, None),
    )
}


def activation(name: str) -> Activation:
    """The :class:`Activation` called ``name`` (``"tanh"``, ``"sigmoid"``, ``"identity"``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown output activation {name!r}.{did_you_mean(str(name), ACTIVATIONS)} "
            f"FLIPAD inverts one of: {', '.join(ACTIVATIONS)}."
        ) from None


# ----------------------------------------------------------------------------------------------- operators


class LinearOperator(ABC):
    """A linear map ``A: R^{in_shape} -> R^{out_shape}`` applied to batches, with its adjoint.

    Attributes:
        in_shape: Per-sample input shape (e.g. ``(C_in, H, W)`` or ``(k,)``).
        out_shape: Per-sample output shape.
        bias: Tensor broadcastable to ``(1, *out_shape)`` that the layer adds (``None`` if none). The
            operator itself never adds it.
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, bias: Tensor | None) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.bias = bias

    @abstractmethod
    def matvec(self, z: Tensor) -> Tensor:
        """(n, *in_shape) -> (n, *out_shape): ``A z``."""

    @abstractmethod
    def rmatvec(self, y: Tensor) -> Tensor:
        """(n, *out_shape) -> (n, *in_shape): ``A^T y``."""

    @property
    def in_dim(self) -> int:
        """Number of unknowns per sample."""
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        """Number of equations per sample."""
        return math.prod(self.out_shape)

    def squared_norm(self, *, n_iter: int = 100, seed: int = 0, rtol: float = 1e-7) -> float:
        """Largest eigenvalue of ``A^T A`` (= ``||A||_2^2``, the Lipschitz constant of the lasso gradient).

        Power iteration from a seeded Gaussian start; the estimate approaches the true value from below,
        so callers add a small margin.

        Args:
            n_iter: Maximum iterations.
            seed: Seed of the start vector.
            rtol: Stop when the estimate changes by less than this fraction.
        """
        dtype = torch.float64 if self._dtype() == torch.float64 else torch.float32
        v = torch.randn((1, *self.in_shape), generator=torch_generator(seed, "power-iteration"), dtype=dtype)
        v = v.to(self._device())
        v = v / v.norm()
        estimate = 0.0
        with torch.no_grad():
            for _ in range(n_iter):
                w = self.rmatvec(self.matvec(v))
                new = float(w.norm())
                if new == 0.0:
                    return 0.0
                v = w / new
                if abs(new - estimate) <= rtol * new:
                    estimate = new
                    break
                estimate = new
        return estimate

    def to_matrix(self, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The explicit (out_dim, in_dim) matrix of ``A`` (for tests and small reference solvers)."""
        eye = torch.eye(self.in_dim, dtype=dtype, device=self._device())
        cols = []
        with torch.no_grad():
            for start in range(0, self.in_dim, 1024):
                basis = eye[start : start + 1024].reshape(-1, *self.in_shape)
                cols.append(self.matvec(basis).reshape(len(basis), -1))
        return torch.cat(cols).T.contiguous()

    def _dtype(self) -> torch.dtype:
        return torch.float32

    def _device(self) -> torch.device:
        return torch.device("cpu")


def _weight(layer_weight: Tensor) -> Tensor:
    return layer_weight.detach().clone()


def _cast(weight: Tensor, like: Tensor) -> Tensor:
    return weight if weight.dtype == like.dtype else weight.to(like.dtype)


class DenseOperator(LinearOperator):
    """``A z = z @ M^T`` on the last axis (``nn.Linear`` or an explicit matrix).

    Args:
        matrix: (m, k) matrix (e.g. ``nn.Linear.weight``).
        in_shape: Per-sample input shape ending in ``k`` (default ``(k,)``).
        bias: Optional (m,) bias of the layer.
    """

    def __init__(self, matrix: Tensor, in_shape: Shape | None = None, bias: Tensor | None = None) -> None:
        if matrix.ndim != 2:
            raise ConfigError(f"DenseOperator needs a 2-D matrix; got shape {tuple(matrix.shape)}.")
        shape = tuple(in_shape) if in_shape is not None else (int(matrix.shape[1]),)
        if shape[-1] != matrix.shape[1]:
            raise DataError(f"The final linear layer takes {matrix.shape[1]} features; its input has shape {shape}.")
        super().__init__(shape, (*shape[:-1], int(matrix.shape[0])), None if bias is None else bias.detach().clone())
        self.matrix = _weight(matrix)

    def matvec(self, z: Tensor) -> Tensor:
        return z @ _cast(self.matrix, z).T

    def rmatvec(self, y: Tensor) -> Tensor:
        return y @ _cast(self.matrix, y)

    def _dtype(self) -> torch.dtype:
        return self.matrix.dtype

    def _device(self) -> torch.device:
        return self.matrix.device


def _ints(values: object) -> tuple[int, ...]:
    """A layer's stride / padding / dilation as a tuple of ints."""
    if isinstance(values, int):
        return (values, values)
    if not isinstance(values, tuple) or not all(isinstance(v, int) for v in values):
        raise ConfigError(f"Expected integer convolution parameters; got {values!r}.")
    return tuple(int(v) for v in values)


class _ConvOperator(LinearOperator):
    """Shared set-up of the two convolution operators."""

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d, in_shape: Shape) -> None:
        if len(in_shape) != 3 or in_shape[0] != layer.in_channels:
            raise DataError(
                f"The final {type(layer).__name__} takes ({layer.in_channels}, H, W) inputs; "
                f"its input has shape {tuple(in_shape)}."
            )
        self.weight = _weight(layer.weight)
        self.stride = _ints(layer.stride)
        self.padding = _ints(layer.padding)
        self.dilation = _ints(layer.dilation)
        self.groups = int(layer.groups)
        bias = None if layer.bias is None else layer.bias.detach().clone().reshape(-1, 1, 1)
        super().__init__(in_shape, (1,), bias)
        with torch.no_grad():
            self.out_shape = tuple(self.matvec(torch.zeros((1, *self.in_shape), dtype=self.weight.dtype)).shape[1:])

    def _dtype(self) -> torch.dtype:
        return self.weight.dtype

    def _device(self) -> torch.device:
        return self.weight.device


class Conv2dOperator(_ConvOperator):
    """``nn.Conv2d`` with zero padding; the adjoint is the matching transposed convolution.

    Args:
        layer: The convolution (``padding_mode="zeros"`` and numeric padding).
        in_shape: ``(C_in, H, W)`` of its input.
    """

    def __init__(self, layer: nn.Conv2d, in_shape: Shape) -> None:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ConfigError("Conv2dOperator needs zero numeric padding; use AutogradOperator for this layer.")
        super().__init__(layer, in_shape)

    def matvec(self, z: Tensor) -> Tensor:
        return F.conv2d(z, _cast(self.weight, z), None, self.stride, self.padding, self.dilation, self.groups)

    def rmatvec(self, y: Tensor) -> Tensor:
        return conv2d_input(
            (y.shape[0], *self.in_shape),
            _cast(self.weight, y),
            y,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )


class ConvTranspose2dOperator(_ConvOperator):
    """``nn.ConvTranspose2d``; the adjoint is the convolution with the same weight, stride and padding.

    Args:
        layer: The transposed convolution (zero padding).
        in_shape: ``(C_in, H, W)`` of its input.
    """

    def __init__(self, layer: nn.ConvTranspose2d, in_shape: Shape) -> None:
        self.output_padding = _ints(layer.output_padding)
        super().__init__(layer, in_shape)

    def matvec(self, z: Tensor) -> Tensor:
        return F.conv_transpose2d(
            z,
            _cast(self.weight, z),
            None,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    def rmatvec(self, y: Tensor) -> Tensor:
        # conv2d maps the (larger) output back to exactly in_shape since output_padding < stride
        return F.conv2d(y, _cast(self.weight, y), None, self.stride, self.padding, self.dilation, self.groups)


class AutogradOperator(LinearOperator):
    """Any bias-free linear map given as a function; the adjoint is a vector-Jacobian product.

    Args:
        fn: Linear function (n, *in_shape) -> (n, *out_shape) (no bias!).
        in_shape: Per-sample input shape.
        bias: Optional bias the layer adds after ``fn``.
        dtype: Dtype of the map's parameters (used for power iteration and :meth:`to_matrix`).
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        in_shape: Shape,
        bias: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.fn = fn
        self.dtype = dtype
        super().__init__(in_shape, (1,), bias)
        with torch.no_grad():
            self.out_shape = tuple(fn(torch.zeros((1, *self.in_shape), dtype=dtype)).shape[1:])

    def _dtype(self) -> torch.dtype:
        return self.dtype

    def matvec(self, z: Tensor) -> Tensor:
        return self.fn(z)

    def rmatvec(self, y: Tensor) -> Tensor:
        with torch.enable_grad():
            z = torch.zeros((y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (grad,) = torch.autograd.grad(self.fn(z), z, grad_outputs=y)
        return grad


class SparseOperator(LinearOperator):
    """An explicit sparse (CSR) matrix ``A``, built from another operator.

    Small convolution layers are far faster as a sparse matrix product on a CPU than as a convolution
    call (a 4x4 transposed convolution touches 16 of 256 outputs per unknown, about 6% density), so
    :func:`operator_for` converts them when the dense matrix would be small.

    Args:
        op: The operator to materialise (its :meth:`LinearOperator.to_matrix` must fit in memory).
    """

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.in_shape, op.out_shape, op.bias)
        dense = op.to_matrix(dtype=op._dtype())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.matrix = dense.to_sparse_csr()
            self.matrix_t = dense.T.contiguous().to_sparse_csr()
        self._matrix_dtype = dense.dtype

    def _apply(self, matrix: Tensor, x: Tensor, shape: Shape) -> Tensor:
        flat = x.reshape(len(x), -1).T.contiguous()
        out = (matrix if x.dtype == self._matrix_dtype else matrix.to(x.dtype)) @ flat
        return out.T.reshape(len(x), *shape)

    def matvec(self, z: Tensor) -> Tensor:
        return self._apply(self.matrix, z, self.out_shape)

    def rmatvec(self, y: Tensor) -> Tensor:
        return self._apply(self.matrix_t, y, self.in_shape)

    def _dtype(self) -> torch.dtype:
        return self._matrix_dtype


#: :func:`operator_for` materialises convolutions as sparse matrices up to this many dense entries.
SPARSE_LIMIT = 1 << 26


SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def operator_for(layer: nn.Module, in_shape: Shape, *, sparse: bool | None = None) -> LinearOperator:
    """The :class:`LinearOperator` of a final layer (without its bias, which is kept in ``.bias``).

    Args:
        layer: ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d``.
        in_shape: Per-sample shape of the layer's input (the penultimate activation).
        sparse: Materialise a convolution as a :class:`SparseOperator` (same map, faster on a CPU for
            small layers). ``None``: when the dense matrix has at most :data:`SPARSE_LIMIT` entries.

    Raises:
        ConfigError: For any other layer type (names the supported ones).
    """
    op = _layer_operator(layer, in_shape)
    if isinstance(op, DenseOperator):
        return op
    if sparse is None:
        sparse = op.in_dim * op.out_dim <= SPARSE_LIMIT
    return SparseOperator(op) if sparse else op


def _layer_operator(layer: nn.Module, in_shape: Shape) -> LinearOperator:
    if isinstance(layer, nn.Linear):
        return DenseOperator(layer.weight, in_shape, layer.bias)
    if isinstance(layer, nn.ConvTranspose2d):
        if layer.padding_mode != "zeros":
            raise ConfigError(f"ConvTranspose2d final layers need padding_mode='zeros'; got {layer.padding_mode!r}.")
        return ConvTranspose2dOperator(layer, in_shape)
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
            return Conv2dOperator(layer, in_shape)
        weight = _weight(layer.weight)
        bias = None if layer.bias is None else layer.bias.detach().clone().reshape(-1, 1, 1)

        def conv(z: Tensor) -> Tensor:
            out: Tensor = layer._conv_forward(z, _cast(weight, z), None)
            return out

        return AutogradOperator(conv, in_shape, bias, dtype=weight.dtype)
    raise ConfigError(
        f"FLIPAD cannot invert a final layer of type {type(layer).__name__}: it needs a linear last layer, one of "
        f"{', '.join(t.__name__ for t in SUPPORTED_LAYERS)}. Name another layer with final_layer='path.to.layer'."
    )


# ------------------------------------------------------------------------------------------------ solver


class LassoSolution(NamedTuple):
    """What :func:`fista_lasso` returns.

    Attributes:
        solution: (n, *in_shape) minimisers ``d``.
        n_iter: (n,) iterations each sample took.
        converged: (n,) whether the tolerance was met before ``max_iter``.
    """

    solution: Tensor
    n_iter: Tensor
    converged: Tensor


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """Proximal operator of ``threshold * ||.||_1``: ``sign(x) * max(|x| - threshold, 0)``."""
    return x - x.clamp(-threshold, threshold)


def lasso_objective(op: LinearOperator, target: Tensor, d: Tensor, alpha: float) -> Tensor:
    """Per-sample lasso objective ``1/2 ||target - A d||^2 + alpha ||d||_1``.

    Args:
        op: The operator ``A``.
        target: (n, *out_shape) right-hand sides.
        d: (n, *in_shape) candidate solutions.
        alpha: L1 weight.

    Returns:
        (n,) objective values.
    """
    with torch.no_grad():
        residual = (op.matvec(d) - target).flatten(1)
        return 0.5 * residual.pow(2).sum(1) + alpha * d.flatten(1).abs().sum(1)


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def fista_lasso(
    op: LinearOperator,
    target: Tensor,
    alpha: float,
    *,
    lipschitz: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    restart: bool = True,
    init: Tensor | None = None,
    censored: tuple[Tensor, Tensor] | None = None,
) -> LassoSolution:
    """Solve ``min_d 1/2 ||target_i - A d||^2 + alpha ||d||_1`` for every sample ``i`` of a batch.

    FISTA (Beck & Teboulle, 2009): ``d+ = soft(y - grad/L, alpha/L)``, momentum ``(t_k - 1)/t_{k+1}``;
    with ``restart`` the momentum of a sample is reset when it points uphill (``<y - d+, d+ - d> > 0``).
    A sample stops when ``||d+ - d|| <= tol * ||d+||``; stopped samples leave the working batch.

    Args:
        op: The linear operator ``A`` (see :func:`operator_for`).
        target: (n, *op.out_shape) right-hand sides (``y - A z_bar`` in FLIPAD).
        alpha: L1 weight (>= 0), on the unscaled objective above.
        lipschitz: ``||A||_2^2`` (computed by power iteration when ``None``; pass it to reuse it).
        max_iter: Iteration cap.
        tol: Relative change of the iterate below which a sample is converged.
        restart: Adaptive (gradient-based) momentum restart.
        init: (n, *op.in_shape) starting point (default zeros).
        censored: Optional ``(below, above)`` boolean masks of shape (n, *op.out_shape): where ``below``
            is set, the target is only an upper bound (``(A d)_j <= target_j`` costs nothing), where
            ``above`` is set only a lower bound. The data term becomes a one-sided (squared hinge) loss
            there, still convex with the same Lipschitz constant. Used for saturated 8-bit pixels.

    Returns:
        :class:`LassoSolution` with the minimisers, iterations and convergence flags.
    """
    if alpha < 0:
        raise ConfigError(f"alpha must be a non-negative number; got {alpha!r}.")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer; got {max_iter!r}.")
    if tuple(target.shape[1:]) != op.out_shape:
        raise DataError(f"target must have per-sample shape {op.out_shape}; got {tuple(target.shape[1:])}.")
    n = target.shape[0]
    big_l = op.squared_norm() * 1.02 if lipschitz is None else float(lipschitz)
    shape = (n, *op.in_shape)
    device = target.device
    out = torch.zeros(shape, dtype=target.dtype, device=device)
    n_iter = torch.full((n,), max_iter, dtype=torch.long, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    if n == 0 or big_l == 0.0:
        return LassoSolution(out, torch.zeros_like(n_iter), torch.ones_like(converged))
    step = 1.0 / big_l
    bcast = (-1,) + (1,) * len(op.in_shape)
    with torch.no_grad():
        x = init.to(device=device, dtype=target.dtype, copy=True) if init is not None else torch.zeros_like(out)
        y = x.clone()
        b = target
        below, above = censored if censored is not None else (None, None)
        t = torch.ones(n, dtype=target.dtype, device=device)
        active = torch.arange(n, device=device)
        for k in range(1, max_iter + 1):
            residual = op.matvec(y) - b
            if below is not None and above is not None:
                residual = torch.where(
                    below, residual.clamp_min(0.0), torch.where(above, residual.clamp_max(0.0), residual)
                )
            x_new = soft_threshold(torch.add(y, op.rmatvec(residual), alpha=-step), alpha * step)
            dx = x_new - x
            t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
            beta = (t - 1.0) / t_new
            if restart:
                # <y - x_new, dx> > 0: the momentum step points uphill
                uphill = _batch_dot(y, dx) > _batch_dot(x_new, dx)
                beta = torch.where(uphill, torch.zeros_like(beta), beta)
                t_new = torch.where(uphill, torch.ones_like(t_new), t_new)
            y = torch.addcmul(x_new, beta.reshape(bcast), dx)
            x, t = x_new, t_new
            change = torch.linalg.vector_norm(dx.flatten(1), dim=1)
            done = change <= tol * torch.linalg.vector_norm(x.flatten(1), dim=1).clamp_min(1e-30)
            if bool(done.any()):
                idx = active[done]
                out[idx] = x[done]
                n_iter[idx] = k
                converged[idx] = True
                keep = ~done
                active, x, y, t, b = active[keep], x[keep], y[keep], t[keep], b[keep]
                if below is not None and above is not None:
                    below, above = below[keep], above[keep]
                if len(active) == 0:
                    break
        if len(active):
            out[active] = x
    return LassoSolution(out, n_iter, converged)
