"""Kronecker-factored projected gradients of a whole batch from one forward and one backward pass (LoGra).

For an ``nn.Linear`` or ``nn.Conv2d`` layer and a loss that sums over positions ``p`` (tokens, pixels), the
gradient of one example is ``G = sum_p g_p x_p^T``: ``g_p`` the gradient of the loss with respect to the
layer's output at ``p``, ``x_p`` its input there (for a convolution the input patch of ``p``, one group's
channels). The :class:`~genprov.attribution.data.projectors.KroneckerProjector`'s features of the layer are
therefore ``P_out G P_in^T = sum_p (P_out g_p)(P_in x_p)^T`` (plus ``(P_out g_p) p_b^T`` for its bias, the
weight of a constant input 1), and both factors are small: a forward hook projects each layer's input with
``P_in`` as it passes (a convolution's input with ``P_in`` as a ``(k_in, in / groups, kh, kw)`` kernel, so no
patches are unfolded), and the gradients of the layers' outputs, from ONE backward pass of the summed
loss, are projected with ``P_out``. The per-example sum over positions (and over the rows of an example: the
K timesteps of TRAK) is a batched ``(k_out, n) @ (n, k_in)`` product. No per-example gradient is formed
(LoGra: Choe et al., 2024, sec. 3.2; the same outer-product identity as Goodfellow's 2015 per-example
gradient trick).

The backward pass of ``sum over rows of f(row)`` gives each row the gradient of its own term only when no
layer mixes the rows of a batch: BatchNorm in training mode (or without running statistics) does, and is
refused (:func:`check_rows_independent`); GroupNorm, LayerNorm and attention over positions of one row do
not. A layer's weight used outside its module's call (a tied weight, ``F.linear(x, module.weight)``) would
be missed by the hooks: such layers are not covered (:func:`kronecker_layers` leaves out parameters held by
several modules, and ``nn.MultiheadAttention``'s projections, which are not called as modules, are not
``nn.Linear`` instances of the exact type).

Example:
    >>> layers, covered = kronecker_layers(model, [n for n, _ in model.named_parameters()])  # doctest: +SKIP
    >>> phi = kronecker_features(model, layers, projector, lambda: model(x).pow(2).sum(), n_examples=len(x),
    ...     rows=len(x))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.attribution.data.projectors import KroneckerProjector
from genprov.exceptions import ConfigError, DataError

__all__ = ["KRONECKER_MODULES", "KroneckerLayer", "check_rows_independent", "kronecker_features", "kronecker_layers"]

#: The module types whose per-example gradients the hooks compute (exact types: a subclass may compute more).
KRONECKER_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclasses.dataclass(frozen=True)
class KroneckerLayer:
    """A covered layer: an ``nn.Linear`` or ``nn.Conv2d`` and which of its parameters are selected.

    Attributes:
        name: The module's name in the model (the projector's layer name).
        module: The module.
        weight: The selected weight's parameter name, or ``None``.
        bias: The selected bias's parameter name, or ``None``.
        shape: The module's weight shape: ``(d_out, d_in)`` or ``(d_out, in / groups, kh, kw)``.
    """

    name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    shape: tuple[int, ...]


def kronecker_layers(model: nn.Module, names: Sequence[str]) -> tuple[list[KroneckerLayer], list[str]]:
    """The layers of ``model`` whose selected parameters (``names``) the hooks cover, and the covered names.

    Covered: the ``weight`` and ``bias`` of modules of exactly :data:`KRONECKER_MODULES`' types, held by no
    other module. Every other selected parameter (norms, embeddings, raw parameters, tied weights) is left
    out: the caller reports what is left.
    """
    selected = set(names)
    holders: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    layers: list[KroneckerLayer] = []
    covered: list[str] = []
    for module_name, module in model.named_modules():
        if type(module) not in KRONECKER_MODULES:
            continue
        picked: dict[str, str | None] = {}
        for local in ("weight", "bias"):
            full = f"{module_name}.{local}" if module_name else local
            p = getattr(module, local, None)
            ok = full in selected and isinstance(p, nn.Parameter) and holders.get(id(p)) == 1
            picked[local] = full if ok else None
        if picked["weight"] or picked["bias"]:
            shape = tuple(int(s) for s in module.weight.shape)
            layers.append(KroneckerLayer(module_name, module, picked["weight"], picked["bias"], shape))
            covered += [n for n in (picked["weight"], picked["bias"]) if n]
    return layers, [n for n in names if n in set(covered)]


def check_rows_independent(model: nn.Module) -> None:
    """Refuse a model with a layer that mixes the rows of a batch (BatchNorm in training mode or without running
    statistics), under which one backward pass of a batch's summed loss mixes the examples' gradients.

    Raises:
        ConfigError: Naming the layer.
    """
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS) and (module.training or module.running_mean is None):
            raise ConfigError(
                f"projector='kronecker' takes a batch's gradients from one backward pass, but BatchNorm layer "
                f"{name!r} normalises with batch statistics (training mode or track_running_stats=False), which mixes "
                "the examples; put the model in eval mode with running statistics, or use projector='sjlt'."
            )


class _Capture:
    """What the hooks keep of one call of a layer: its projected input (rows, n, k_in) and the zero tensor
    added to its output, whose gradient is the output's."""

    def __init__(self, layer: KroneckerLayer, projector: KroneckerProjector, k_in: int, rows: int) -> None:
        self.layer = layer
        self.rows = rows
        d_in = math.prod(layer.shape[1:])
        self.p_in = None if layer.weight is None else projector.in_factor(layer.weight, d_in, k_in)
        self.p_b = None if layer.bias is None else projector.in_factor(layer.bias, 1, k_in)[:, 0]
        self.calls: list[tuple[Tensor, Tensor]] = []

    def hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = args[0]
        for what, shape in (("input", x.shape), ("output", output.shape)):
            if shape[0] != self.rows:
                raise DataError(
                    f"layer {self.layer.name!r}'s {what} has leading dimension {shape[0]}, not the batch's {self.rows} "
                    "rows; projector='kronecker' needs batch-first layers: exclude it or use projector='sjlt'."
                )
        with torch.no_grad():
            projected = self._project_input(x, output)
        zero = torch.zeros_like(output, requires_grad=True)
        self.calls.append((projected, zero))
        return output + zero

    def _project_input(self, x: Tensor, output: Tensor) -> Tensor:
        """``P_in x_p (+ p_b)`` at every position: (rows, positions, k_in), positions ordered as in
        :meth:`project_output` (a convolution: group-major, then output pixels)."""
        module = self.layer.module
        p_in = None if self.p_in is None else self.p_in.to(x)
        p_b = None if self.p_b is None else self.p_b.to(x)
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            positions = output.shape[2] * output.shape[3]
            if p_in is None:
                assert p_b is not None
                return p_b.expand(x.shape[0], groups * positions, -1)
            padding = module.padding
            if module.padding_mode != "zeros" or isinstance(padding, str):
                mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
                x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
                padding = (0, 0)
            kernel = p_in.reshape(-1, *self.layer.shape[1:])
            grouped = x.reshape(x.shape[0] * groups, -1, *x.shape[2:])
            out = F.conv2d(grouped, kernel, p_b, module.stride, padding, module.dilation)
            return (
                out.reshape(x.shape[0], groups, -1, positions).transpose(2, 3).reshape(x.shape[0], -1, kernel.shape[0])
            )
        if p_in is None:
            assert p_b is not None
            return p_b.expand(*x.shape[:-1], -1).reshape(x.shape[0], -1, p_b.shape[0])
        return F.linear(x, p_in, p_b).reshape(x.shape[0], -1, p_in.shape[0])

    def project_output(self, grad: Tensor, p_out: Tensor) -> Tensor:
        """``P_out g_p`` at every position: (rows, positions, k_out) from the output gradient ``grad``."""
        module = self.layer.module
        p_out = p_out.to(grad)
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            per_group = grad.reshape(grad.shape[0], groups, grad.shape[1] // groups, -1)
            out = torch.einsum("kgo,rgop->rgpk", p_out.reshape(-1, groups, grad.shape[1] // groups), per_group)
            return out.reshape(grad.shape[0], -1, p_out.shape[0])
        return (grad.reshape(grad.shape[0], -1, grad.shape[-1]) @ p_out.T).reshape(grad.shape[0], -1, p_out.shape[0])


@contextlib.contextmanager
def _hooked(captures: Sequence[_Capture]) -> Iterator[None]:
    handles = [c.layer.module.register_forward_hook(c.hook) for c in captures]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def kronecker_features(
    model: nn.Module,
    layers: Sequence[KroneckerLayer],
    projector: KroneckerProjector,
    loss: Callable[[], Tensor],
    *,
    n_examples: int,
    rows: int,
) -> Tensor:
    """The Kronecker-projected gradients of ``n_examples`` examples from one forward and one backward pass.

    Args:
        model: The model ``loss`` runs (checked by :func:`check_rows_independent`).
        layers: The covered layers (:func:`kronecker_layers`).
        projector: Gives the factors and the layout (layers in sorted order).
        loss: Runs the forward pass of the whole batch (``rows`` rows, example ``b`` owning rows
            ``b * rows / n_examples`` to ``(b + 1) * rows / n_examples - 1``) and returns the scalar whose
            gradient, restricted to example ``b``'s rows, is example ``b``'s (a sum over rows of per-row terms,
            e.g. ``sum_rows f / K``). Its graph may be built with every parameter detached.
        n_examples: Examples in the batch.
        rows: Rows of the batch (every covered layer's input and output must lead with them).

    Returns:
        (n_examples, n_layers * k_out * k_in) features in the loss's dtype, equal to ``projector.project`` of the
        exact per-example gradients of the covered parameters up to float rounding.

    Raises:
        ConfigError: A layer mixes the rows of the batch (:func:`check_rows_independent`).
        DataError: A covered layer's input or output is not batch-first.
    """
    if n_examples < 1 or rows % n_examples:
        raise DataError(f"rows={rows} must be a positive multiple of n_examples={n_examples}.")
    check_rows_independent(model)
    names = [n for layer in layers for n in (layer.weight, layer.bias) if n]
    order, k_out, k_in = projector.layout(names)
    captures = [_Capture(layer, projector, k_in, rows) for layer in layers]
    with _hooked(captures), torch.enable_grad():
        value = loss()
        zeros = [zero for c in captures for _, zero in c.calls]
        grads: Sequence[Tensor | None] = (
            torch.autograd.grad(value, zeros, allow_unused=True)
            if zeros and value.requires_grad
            else [None] * len(zeros)
        )
    out = torch.zeros(n_examples, len(order) * k_out * k_in, dtype=value.dtype, device=value.device)
    found = iter(grads)
    for c in captures:
        slot = projector.slot(out, order.index(c.layer.name), k_out, k_in)
        p_out = projector.out_factor(c.layer.name, c.layer.shape[0], k_out)
        for projected, _ in c.calls:
            grad = next(found)
            if grad is None:  # the call did not reach the loss
                continue
            g = c.project_output(grad, p_out).reshape(n_examples, -1, k_out)
            slot.add_(g.transpose(1, 2) @ projected.reshape(n_examples, -1, k_in))
    return out
