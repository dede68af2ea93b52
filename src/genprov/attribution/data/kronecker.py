"""One forward and one backward pass of a whole batch with module hooks: Kronecker-factored projected gradients
(LoGra) and exact per-example gradients.

For an ``nn.Linear`` or ``nn.Conv2d`` layer and a loss that sums over positions ``p`` (tokens, pixels), the
gradient of one example is ``G = sum_p g_p x_p^T``: ``g_p`` the gradient of the loss with respect to the
layer's output at ``p``, ``x_p`` its input there (for a convolution the input patch of ``p``, one group's
channels); the bias's is ``sum_p g_p``. For an ``nn.GroupNorm`` or ``nn.LayerNorm`` with output
``x_hat * w + b`` the example's gradients are ``sum_p g_p * x_hat_p`` (``w``) and ``sum_p g_p`` (``b``). Both
follow from each layer's input (or ``x_hat``) and output gradient, which hooks capture during ONE forward and
ONE backward pass of the batch's summed loss (:func:`_hooked_pass`); the per-example sums over positions (and
over the rows of an example: the K timesteps of TRAK) are batched products. Two consumers share the capture:

- :func:`kronecker_features` (the ``kronecker`` projector): the
  :class:`~genprov.attribution.data.projectors.KroneckerProjector`'s features of a layer are
  ``P_out G P_in^T = sum_p (P_out g_p)(P_in x_p)^T`` (plus ``(P_out g_p) p_b^T`` for its bias, the weight of a
  constant input 1), and both factors are small: the forward hook projects each layer's input with ``P_in`` as
  it passes (a convolution's input with ``P_in`` as a ``(k_in, in / groups, kh, kw)`` kernel, so no patches are
  unfolded) and the output gradient is projected with ``P_out``. No per-example gradient is formed (LoGra:
  Choe et al., 2024, sec. 3.2; the same outer-product identity as Goodfellow's 2015 per-example gradient trick).
- :func:`per_example_gradients` (TRAK's ``per_example="hooks"``): the exact per-example gradients of the
  covered parameters, ``(n_examples, *shape)`` each. A convolution's per-example weight gradients come from
  torch's own convolution weight-gradient kernel (``torch.nn.grad.conv2d_weight``) with the examples as groups
  (Rochette et al., 2019): the rows ``(n K, C, H, W)`` become ``(K, n C, H, W)`` and one grouped call with
  ``n x groups`` groups sums over each example's K rows and positions. On a CPU (1 thread) that is the fastest
  of three ways measured: within the whole pass it took 0.97x the time of one weight-gradient call per example
  on ``benchmarks/bench_trak.py``'s 1M-parameter DDPM and 0.67x on the tiny DDPM (one call per layer instead of
  n: the per-call overhead dominates small layers), and alone about the batch's own summed weight gradient (1-1.3x);
  unfolding the input patches (``F.unfold`` + batched matmul) took 2-6x that, with 9x the input's memory.

The parameters need not (and should not) require a gradient during the pass: each hooked layer's output passes
through a tap (an identity autograd function, no copy) whose backward hands the output's gradient to the consumer,
and the backward pass is asked for the gradient of the taps' common zero-dimensional input only (one per device)
(``torch.autograd.backward(..., inputs=anchors)``), so autograd never computes the batch's summed weight
gradients (nor anything upstream of the first taps), and each layer's share is consumed as soon as its gradient
arrives (its captured input freed).

The backward pass of ``sum over rows of f(row)`` gives each row the gradient of its own term only when no
layer mixes the rows of a batch: BatchNorm in training mode (or without running statistics) does, and is
refused (:func:`check_rows_independent`); GroupNorm, LayerNorm and attention over positions of one row do
not. A layer's weight used outside its module's call (a tied weight, ``F.linear(x, module.weight)``) would
be missed by the hooks: such layers are not covered (the layer functions leave out parameters held by
several modules, and ``nn.MultiheadAttention``'s projections, which are not called as modules, are not
``nn.Linear`` instances of the exact type); a weight read by ``F.linear`` elsewhere in a model's code cannot
be detected and is the caller's to exclude. A layer whose input or output does not lead with the batch's rows,
or whose input is modified in place before the backward pass, raises :class:`HookLayoutError`.

Example:
    >>> layers, covered = kronecker_layers(model, [n for n, _ in model.named_parameters()])  # doctest: +SKIP
    >>> phi = kronecker_features(model, layers, projector, lambda: model(x).pow(2).sum(), n_examples=len(x),
    ...     rows=len(x))  # doctest: +SKIP
    >>> layers, covered = gradient_layers(model, [n for n, _ in model.named_parameters()])  # doctest: +SKIP
    >>> grads = per_example_gradients(model, layers, lambda: model(x).pow(2).sum(), n_examples=len(x),
    ...     rows=len(x))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import Tensor, nn

from genprov.attribution.data.projectors import KroneckerProjector
from genprov.exceptions import ConfigError, DataError

__all__ = [
    "GRADIENT_MODULES",
    "KRONECKER_MODULES",
    "HookLayoutError",
    "KroneckerLayer",
    "check_rows_independent",
    "gradient_layers",
    "hooked_output_values",
    "kronecker_features",
    "kronecker_layers",
    "per_example_gradients",
    "rows_mixing_layer",
]

#: The module types whose weights the ``kronecker`` projector's hooks cover (exact types: a subclass may compute
#: more).
KRONECKER_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
#: The module types whose per-example gradients :func:`per_example_gradients` computes (exact types).
GRADIENT_MODULES: tuple[type[nn.Module], ...] = (*KRONECKER_MODULES, nn.GroupNorm, nn.LayerNorm)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_KRONECKER = ("projector='kronecker'", "projector='sjlt'")
_HOOKS = ("per_example='hooks'", "per_example='loop'")


class HookLayoutError(DataError):
    """A hooked layer's call cannot be split by example: its input or output does not lead with the batch's rows,
    or its input was modified in place before the backward pass (``per_example="auto"`` then loops instead)."""


@dataclasses.dataclass(frozen=True)
class KroneckerLayer:
    """A covered layer: a module of one of :data:`GRADIENT_MODULES`' types and which of its parameters are selected.

    Attributes:
        name: The module's name in the model (the ``kronecker`` projector's layer name).
        module: The module.
        weight: The selected weight's parameter name, or ``None``.
        bias: The selected bias's parameter name, or ``None``.
        shape: The module's weight shape: ``(d_out, d_in)``, ``(d_out, in / groups, kh, kw)``, ``(C,)`` (GroupNorm)
            or ``normalized_shape`` (LayerNorm).
    """

    name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    shape: tuple[int, ...]


def _covered_layers(
    model: nn.Module, names: Sequence[str], types: tuple[type[nn.Module], ...]
) -> tuple[list[KroneckerLayer], list[str]]:
    """The modules of exactly ``types`` whose selected ``weight`` / ``bias`` no other module holds, and the
    covered names (in ``names``' order)."""
    selected = set(names)
    holders: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    layers: list[KroneckerLayer] = []
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        if type(module) not in types:
            continue
        picked: dict[str, str | None] = {}
        for local in ("weight", "bias"):
            full = f"{module_name}.{local}" if module_name else local
            p = getattr(module, local, None)
            ok = full in selected and isinstance(p, nn.Parameter) and holders.get(id(p)) == 1
            picked[local] = full if ok else None
        if picked["weight"] or picked["bias"]:
            held = module.weight if isinstance(module.weight, Tensor) else module.bias
            layers.append(KroneckerLayer(module_name, module, picked["weight"], picked["bias"], tuple(held.shape)))
            covered.update(n for n in (picked["weight"], picked["bias"]) if n)
    return layers, [n for n in names if n in covered]


def kronecker_layers(model: nn.Module, names: Sequence[str]) -> tuple[list[KroneckerLayer], list[str]]:
    """The layers of ``model`` whose selected parameters (``names``) the ``kronecker`` projector's hooks cover, and
    the covered names.

    Covered: the ``weight`` and ``bias`` of modules of exactly :data:`KRONECKER_MODULES`' types, held by no
    other module. Every other selected parameter (norms, embeddings, raw parameters, tied weights) is left
    out: the caller reports what is left.
    """
    return _covered_layers(model, names, KRONECKER_MODULES)


def gradient_layers(model: nn.Module, names: Sequence[str]) -> tuple[list[KroneckerLayer], list[str]]:
    """The layers of ``model`` whose selected parameters (``names``) :func:`per_example_gradients` covers, and the
    covered names: the ``weight`` and ``bias`` of modules of exactly :data:`GRADIENT_MODULES`' types
    (``nn.Linear``, ``nn.Conv2d``, ``nn.GroupNorm``, ``nn.LayerNorm``), held by no other module."""
    return _covered_layers(model, names, GRADIENT_MODULES)


def rows_mixing_layer(model: nn.Module) -> str | None:
    """The name of a layer of ``model`` that mixes the rows of a batch as the model is now (BatchNorm in training
    mode or without running statistics), or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS) and (module.training or module.running_mean is None):
            return name
    return None


def check_rows_independent(model: nn.Module, what: tuple[str, str] = _KRONECKER) -> None:
    """Refuse a model with a layer that mixes the rows of a batch (BatchNorm in training mode or without running
    statistics), under which one backward pass of a batch's summed loss mixes the examples' gradients.

    Args:
        model: The model.
        what: The setting that needs independent rows and the one to use instead (named in the error).

    Raises:
        ConfigError: Naming the layer.
    """
    name = rows_mixing_layer(model)
    if name is not None:
        raise ConfigError(
            f"{what[0]} takes a batch's gradients from one backward pass, but BatchNorm layer {name!r} normalises "
            "with batch statistics (training mode or track_running_stats=False), which mixes the examples; put the "
            f"model in eval mode with running statistics, or use {what[1]}."
        )


def _padded(module: nn.Conv2d, x: Tensor) -> tuple[Tensor, Any]:
    """A convolution's input and the padding to convolve it with: padded here (padding 0) under a non-zero
    padding mode or a string padding (``"same"`` may pad asymmetrically)."""
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), (0, 0)
    return x, padding


def _checked_input(
    layer: KroneckerLayer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Tensor,
    rows: int,
    what: tuple[str, str],
) -> Tensor:
    """A hooked call's input, after checking that it and the output lead with the batch's ``rows``.

    Raises:
        HookLayoutError: Naming the layer and what to do instead.
    """
    x: Tensor = args[0] if args else next(iter(kwargs.values()))
    for name, shape in (("input", x.shape), ("output", output.shape)):
        if not shape or shape[0] != rows:
            lead = shape[0] if shape else "no"
            raise HookLayoutError(
                f"layer {layer.name!r}'s {name} has leading dimension {lead}, not the batch's {rows} rows; "
                f"{what[0]} needs batch-first layers: exclude it or use {what[1]}."
            )
    return x


def hooked_output_values(layers: Sequence[KroneckerLayer], run: Callable[[], Any], *, rows: int) -> int:
    """The values of the hooked layers' outputs in one forward pass ``run()`` of ``rows`` rows, without grad: with
    their gradients, what a hooked pass of those rows holds besides the per-example gradients (a caller sizes its
    batches by it). The layers' layout is checked as in :func:`per_example_gradients`.

    Raises:
        HookLayoutError: A covered layer's input or output is not batch-first.
    """
    total = 0

    def hook_of(layer: KroneckerLayer) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            nonlocal total
            _checked_input(layer, args, kwargs, output, rows, _HOOKS)
            total += output.numel()

        return hook

    handles = [layer.module.register_forward_hook(hook_of(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total


_Start = Callable[[KroneckerLayer, Tensor, Tensor], Any]
_Finish = Callable[[KroneckerLayer, Any, Tensor], None]


def _hooked_pass(
    model: nn.Module,
    layers: Sequence[KroneckerLayer],
    loss: Callable[[], Tensor],
    *,
    rows: int,
    start: _Start,
    finish: _Finish,
    what: tuple[str, str],
) -> Tensor:
    """Run ``loss()`` with a forward hook on every layer and one backward pass of its value.

    At each call of a layer ``start(layer, input, output)`` (without grad) returns a state kept until the
    gradient of that call's output arrives in the backward pass; then ``finish(layer, state, output gradient)``
    (without grad) consumes it and the state is dropped. A call whose output does not reach the loss is never
    finished. Returns the loss's value.
    """
    if rows < 1:
        raise DataError(f"rows={rows} must be positive.")
    check_rows_independent(model, what)
    anchors: dict[torch.device, Tensor] = {}  # the taps' common input, one per device (see _Tap)

    def hook_of(layer: KroneckerLayer) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Tensor:
            x = _checked_input(layer, args, kwargs, output, rows, what)
            with torch.no_grad():
                state = [start(layer, x, output)]

            def arrived(grad: Tensor) -> None:
                with torch.no_grad():
                    finish(layer, state.pop(), grad)

            if output.device not in anchors:
                anchors[output.device] = torch.zeros((), device=output.device, requires_grad=True)
            return _Tap.apply(output, anchors[output.device], arrived)

        return hook

    handles = [layer.module.register_forward_hook(hook_of(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.enable_grad():
            value = loss()
            if anchors and value.requires_grad:  # (no inputs would mean every leaf)
                torch.autograd.backward(value, inputs=list(anchors.values()))
    finally:
        for handle in handles:
            handle.remove()
    return value


class _Tap(torch.autograd.Function):
    """Identity on a layer's output (marked as modified in place: no copy, no view) that hands the output's
    gradient to ``arrived`` in the backward pass and passes it on unchanged. Its second input, a zero-dimensional
    tensor requiring a gradient (the anchor of the output's device), makes the output require one when nothing
    upstream does, and the anchors are the only inputs the backward pass is asked for, so it runs to the taps and no
    further; they never get a gradient."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, anchor: Tensor, arrived: Callable[[Tensor], None]) -> Tensor:
        ctx.arrived = arrived
        ctx.mark_dirty(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        ctx.arrived(grad)
        return grad, None, None


def _check_rows(rows: int, n_examples: int) -> None:
    if n_examples < 1 or rows % n_examples:
        raise DataError(f"rows={rows} must be a positive multiple of n_examples={n_examples}.")


# ------------------------------------------------------------------------------------ Kronecker projection


class _Projection:
    """The ``kronecker`` projector's factors of one layer, and the two halves of its features: the projected
    input (forward) and its product with the projected output gradient (backward)."""

    def __init__(self, layer: KroneckerLayer, projector: KroneckerProjector, k_in: int, k_out: int) -> None:
        self.layer = layer
        d_in = math.prod(layer.shape[1:])
        self.p_in = None if layer.weight is None else projector.in_factor(layer.weight, d_in, k_in)
        self.p_b = None if layer.bias is None else projector.in_factor(layer.bias, 1, k_in)[:, 0]
        self.p_out = projector.out_factor(layer.name, layer.shape[0], k_out)

    def project_input(self, x: Tensor, output: Tensor) -> Tensor:
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
            x, padding = _padded(module, x)
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

    def project_output(self, grad: Tensor) -> Tensor:
        """``P_out g_p`` at every position: (rows, positions, k_out) from the output gradient ``grad``."""
        module = self.layer.module
        p_out = self.p_out.to(grad)
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            per_group = grad.reshape(grad.shape[0], groups, grad.shape[1] // groups, -1)
            out = torch.einsum("kgo,rgop->rgpk", p_out.reshape(-1, groups, grad.shape[1] // groups), per_group)
            return out.reshape(grad.shape[0], -1, p_out.shape[0])
        return (grad.reshape(grad.shape[0], -1, grad.shape[-1]) @ p_out.T).reshape(grad.shape[0], -1, p_out.shape[0])


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
            e.g. ``sum_rows f / K``). Its graph should be built with no parameter requiring a gradient.
        n_examples: Examples in the batch.
        rows: Rows of the batch (every covered layer's input and output must lead with them).

    Returns:
        (n_examples, n_layers * k_out * k_in) features in the loss's dtype, equal to ``projector.project`` of the
        exact per-example gradients of the covered parameters up to float rounding.

    Raises:
        ConfigError: A layer mixes the rows of the batch (:func:`check_rows_independent`).
        HookLayoutError: A covered layer's input or output is not batch-first.
    """
    _check_rows(rows, n_examples)
    names = [n for layer in layers for n in (layer.weight, layer.bias) if n]
    order, k_out, k_in = projector.layout(names)
    factors = {layer.name: _Projection(layer, projector, k_in, k_out) for layer in layers}
    parts: list[tuple[int, Tensor]] = []

    def start(layer: KroneckerLayer, x: Tensor, output: Tensor) -> Tensor:
        return factors[layer.name].project_input(x, output)

    def finish(layer: KroneckerLayer, projected: Tensor, grad: Tensor) -> None:
        g = factors[layer.name].project_output(grad).reshape(n_examples, -1, k_out)
        parts.append((order.index(layer.name), g.transpose(1, 2) @ projected.reshape(n_examples, -1, k_in)))

    value = _hooked_pass(model, layers, loss, rows=rows, start=start, finish=finish, what=_KRONECKER)
    out = torch.zeros(n_examples, len(order) * k_out * k_in, dtype=value.dtype, device=value.device)
    for index, part in parts:
        projector.slot(out, index, k_out, k_in).add_(part)
    return out


# ------------------------------------------------------------------------------------ exact per-example gradients


def _layer_input(layer: KroneckerLayer, x: Tensor, output: Tensor) -> tuple[Tensor, int]:
    """What a layer's per-example gradients need of its input: the input itself (``nn.Linear``, ``nn.Conv2d``;
    with its version, checked when the gradient arrives) or the normalised ``x_hat`` (``nn.GroupNorm``,
    ``nn.LayerNorm``: recomputed from the input, as the module computes it)."""
    module = layer.module
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, eps=module.eps), -1
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps), -1
    if layer.weight is None:  # a bias alone needs the output gradient only
        return x.new_empty(0), -1
    return x.detach(), x._version


def _layer_gradients(layer: KroneckerLayer, x: Tensor, grad: Tensor, n: int) -> dict[str, Tensor]:
    """The per-example gradients ``(n, *shape)`` of a layer's selected parameters from one call: its input (or
    ``x_hat``) and output gradient, rows grouped by example."""
    module = layer.module
    out: dict[str, Tensor] = {}
    if isinstance(module, nn.Conv2d):
        per_row = grad.reshape(n, -1, grad.shape[1], grad.shape[2] * grad.shape[3])
        if layer.bias:
            out[layer.bias] = per_row.sum(dim=(1, 3))
        if layer.weight:
            x, padding = _padded(module, x)
            k = x.shape[0] // n
            # the examples as groups: rows (n K, C, H, W) -> (K, n C, H, W), one kernel call with n x groups groups
            # sums each example's K rows and positions
            inputs = x.reshape(n, k, *x.shape[1:]).transpose(0, 1).reshape(k, -1, *x.shape[2:])
            grads = grad.reshape(n, k, *grad.shape[1:]).transpose(0, 1).reshape(k, -1, *grad.shape[2:])
            weight = torch.nn.grad.conv2d_weight(
                inputs,
                (n * layer.shape[0], *layer.shape[1:]),
                grads,
                module.stride,
                padding,
                module.dilation,
                n * module.groups,
            )
            out[layer.weight] = weight.reshape(n, *layer.shape)
        return out
    if isinstance(module, nn.Linear):
        g = grad.reshape(n, -1, grad.shape[-1])
        if layer.bias:
            out[layer.bias] = g.sum(1)
        if layer.weight:
            out[layer.weight] = torch.bmm(g.transpose(1, 2), x.reshape(n, -1, x.shape[-1]))
        return out
    if isinstance(module, nn.GroupNorm):  # (rows, C, *): sum over the rows of an example and the positions
        per_channel = (n, -1, grad.shape[1], math.prod(grad.shape[2:]))
        if layer.bias:
            out[layer.bias] = grad.reshape(per_channel).sum(dim=(1, 3))
        if layer.weight:
            out[layer.weight] = (grad * x).reshape(per_channel).sum(dim=(1, 3))
        return out
    shape = layer.shape  # LayerNorm: (rows, ..., *normalized_shape)
    if layer.bias:
        out[layer.bias] = grad.reshape(n, -1, *shape).sum(1)
    if layer.weight:
        out[layer.weight] = (grad * x).reshape(n, -1, *shape).sum(1)
    return out


def per_example_gradients(
    model: nn.Module,
    layers: Sequence[KroneckerLayer],
    loss: Callable[[], Tensor],
    *,
    n_examples: int,
    rows: int,
) -> dict[str, Tensor]:
    """The exact per-example gradients of ``n_examples`` examples from one forward and one backward pass.

    Args:
        model: The model ``loss`` runs (checked by :func:`check_rows_independent`).
        layers: The covered layers (:func:`gradient_layers`).
        loss: Runs the forward pass of the whole batch (``rows`` rows, example ``b`` owning rows
            ``b * rows / n_examples`` to ``(b + 1) * rows / n_examples - 1``) and returns the scalar whose
            gradient, restricted to example ``b``'s rows, is example ``b``'s (a sum over rows of per-row terms,
            e.g. ``sum_rows f / K``). Its graph should be built with no parameter requiring a gradient (else
            the forward pass records what the backward pass then skips).
        n_examples: Examples in the batch.
        rows: Rows of the batch (every covered layer's input and output must lead with them).

    Returns:
        ``{parameter name: (n_examples, *shape)}`` for every selected parameter of ``layers`` (zeros where the
        loss does not depend on it), in the loss's dtype: equal to the gradient of each example's share of the
        loss up to float rounding.

    Raises:
        ConfigError: A layer mixes the rows of the batch (:func:`check_rows_independent`).
        HookLayoutError: A covered layer's input or output is not batch-first, or a layer's input was modified in
            place before the backward pass reached it.
    """
    _check_rows(rows, n_examples)
    grads: dict[str, Tensor] = {}

    def finish(layer: KroneckerLayer, state: tuple[Tensor, int], grad: Tensor) -> None:
        x, version = state
        if version >= 0 and x._version != version:
            raise HookLayoutError(
                f"layer {layer.name!r}'s input was modified in place after the layer ran, so its per-example "
                f"gradients cannot be taken from it; {_HOOKS[0]} needs unmodified inputs: exclude it or use "
                f"{_HOOKS[1]}."
            )
        for name, value in _layer_gradients(layer, x, grad, n_examples).items():
            if name in grads:
                grads[name].add_(value)
            else:
                grads[name] = value

    value = _hooked_pass(model, layers, loss, rows=rows, start=_layer_input, finish=finish, what=_HOOKS)
    out: dict[str, Tensor] = {}
    for layer in layers:
        for name, local in ((layer.weight, "weight"), (layer.bias, "bias")):
            if name is None:
                continue
            found = grads.pop(name) if name in grads else None
            if found is None:  # the loss does not depend on it
                shape = getattr(layer.module, local).shape
                found = torch.zeros(n_examples, *shape, dtype=value.dtype, device=value.device)
            out[name] = found
    return out
