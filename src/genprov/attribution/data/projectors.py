"""Random projections of per-example gradients to ``k`` dimensions (a registry).

TRAK (Park et al., 2023, sec. 3, step 2) replaces each gradient ``g`` (one entry per model parameter) by
``P^T g`` with a random ``P`` of shape ``(n_params, k)`` whose inner products approximate those of the
full gradients (Johnson-Lindenstrauss): ``E ||P^T g||^2 = ||g||^2``. The projection is linear and
block-separable, ``P^T g = sum_b P_b^T g_b`` over parameter blocks ``b``, so :meth:`Projector.project`
takes the gradient as a ``{parameter name: (batch, *shape)}`` mapping and never concatenates it into one
``(batch, n_params)`` vector. Block ``b``'s part of ``P`` depends only on ``(seed, b's name)``, so the
projection of a parameter does not change when others are added or filtered out.

============  ====================================================================================  =======
name          P                                                                                     cost
============  ====================================================================================  =======
``gaussian``  i.i.d. N(0, 1/k) (TRAK's reference projector)                                         O(d k)
``rademacher``  i.i.d. +-1/sqrt(k)                                                                  O(d k)
``sjlt``      sparse JL / count-sketch: per input coordinate ``nnz`` entries +-1/sqrt(nnz), one in   O(d nnz)
              each of ``nnz`` column blocks (Kane & Nelson, 2014); the fast default on a CPU
``identity``  no projection (the exact gradient; for tests and tiny models)                         O(d)
``kronecker``  per layer ``P_out G P_in^T`` with Gaussian factors (LoGra, Choe et al., 2024): see    O(d k)
              :class:`KroneckerProjector`; TRAK computes it from one batched pass with hooks
============  ====================================================================================  =======

The dense projectors generate each block's matrix once, from per-chunk generators, and keep it while
their cache (``cache_mb``) lasts; blocks beyond the budget are regenerated chunk by chunk at each call
(the numbers are the same either way; a warning suggests ``sjlt``).

Example:
    >>> proj = PROJECTORS.create("sjlt", config=SJLTConfig(dim=512, seed=0))
    >>> phi = proj.project({"w": torch.randn(8, 100, 30), "b": torch.randn(8, 30)})
    >>> tuple(phi.shape)
    (8, 512)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from genprov.config import Config, is_int, require, require_ints
from genprov.exceptions import DataError
from genprov.registry import Registry
from genprov.utils.seeding import torch_generator

__all__ = [
    "PROJECTORS",
    "DenseProjector",
    "DenseProjectorConfig",
    "GaussianProjector",
    "IdentityProjector",
    "KroneckerConfig",
    "KroneckerProjector",
    "Projector",
    "ProjectorConfig",
    "RademacherProjector",
    "SJLTConfig",
    "SJLTProjector",
    "as_blocks",
]

logger = logging.getLogger(__name__)

#: Elements of one generated chunk of a dense projection matrix (16 MiB of float32).
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProjectorConfig(Config):
    """Settings every random projector takes.

    Attributes:
        dim: Output dimension ``k``.
        seed: Seed of the projection matrix.
    """

    dim: int = 2048
    seed: int = 0

    def validate(self) -> None:
        require(is_int(self.dim) and self.dim >= 1, "dim", "a positive integer", self.dim)
        require(is_int(self.seed) and self.seed >= 0, "seed", "a non-negative integer", self.seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseProjectorConfig(ProjectorConfig):
    """Settings of the dense (gaussian, rademacher) projectors.

    Attributes:
        cache_mb: Memory for generated matrix blocks, in MiB; blocks beyond it are regenerated per call.
    """

    cache_mb: float = 1024.0

    def validate(self) -> None:
        super().validate()
        require(self.cache_mb >= 0, "cache_mb", "a non-negative number of MiB", self.cache_mb)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SJLTConfig(ProjectorConfig):
    """Settings of the sparse JL projector.

    Attributes:
        nnz: Non-zeros per input coordinate (``dim`` must be a multiple of it); 1 is a count-sketch.
    """

    nnz: int = 1

    def validate(self) -> None:
        super().validate()
        require(
            is_int(self.nnz) and self.nnz >= 1 and self.dim % self.nnz == 0,
            "nnz",
            f"a positive divisor of dim={self.dim}",
            self.nnz,
        )


def as_blocks(grads: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
    """Gradient blocks as ``{name: (b, d_name)}`` in sorted name order (a tensor is one block named ``""``).

    Raises:
        DataError: On an empty mapping, non-floating blocks or blocks with different batch sizes.
    """
    if isinstance(grads, Tensor):
        if grads.ndim < 1:
            raise DataError(f"gradients must have a batch dimension (b, ...); got shape {tuple(grads.shape)}.")
        raw = {"": grads}
    else:
        raw = dict(grads)
    if not raw:
        raise DataError("project() needs at least one gradient block; got none.")
    batch = {int(g.shape[0]) for g in raw.values()}
    if len(batch) != 1:
        raise DataError(f"every gradient block must have the same batch size; got sizes {sorted(batch)}.")
    blocks = {}
    for name in sorted(raw):
        g = raw[name]
        if not g.is_floating_point():
            raise DataError(f"gradient block {name!r} must be floating point; got {g.dtype}.")
        blocks[name] = g.reshape(g.shape[0], -1)
    return blocks


class Projector(ABC):
    """A linear map from per-example gradients to ``k``-dimensional features, block by block.

    Args:
        config: The projector's config (its ``dim`` and ``seed``); ``None`` for :class:`IdentityProjector`.
    """

    def __init__(self, config: ProjectorConfig | None = None) -> None:
        self.config = config
        self._sizes: dict[str, int] = {}

    def output_dim(self, sizes: Mapping[str, int]) -> int:
        """The output dimension for blocks of ``sizes`` (``{name: n_values}``); ``config.dim`` for random ones."""
        assert self.config is not None  # every random projector has a config
        return self.config.dim

    def project(self, grads: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Project a batch of gradients.

        Args:
            grads: ``{parameter name: (b, *param_shape)}`` per-example gradients, or a ``(b, d)`` tensor.

        Returns:
            (b, k) features in the gradients' dtype; example ``i``'s row depends only on its gradient.
        """
        blocks = as_blocks(grads)
        sizes = {name: int(g.shape[1]) for name, g in blocks.items()}
        self._check_sizes(sizes)
        first = next(iter(blocks.values()))
        out = torch.zeros(first.shape[0], self.output_dim(sizes), dtype=first.dtype, device=first.device)
        offset = 0
        for name, g in blocks.items():
            self._accumulate(name, g, out, offset)
            offset += g.shape[1]
        return out

    def matrix(self, sizes: Mapping[str, int]) -> Tensor:
        """The explicit ``(sum(sizes), k)`` float32 matrix ``P`` (blocks stacked in sorted name order).

        ``project(g)`` equals ``concat(g_blocks) @ P`` (for tests and small models only).
        """
        sorted_sizes = {name: int(sizes[name]) for name in sorted(sizes)}
        self._check_sizes(sorted_sizes)
        k = self.output_dim(sorted_sizes)
        rows = []
        offset = 0
        for name, d in sorted_sizes.items():
            block = torch.zeros(d, k)
            self._accumulate(name, torch.eye(d), block, offset)
            rows.append(block)
            offset += d
        return torch.cat(rows)

    def _check_sizes(self, sizes: Mapping[str, int]) -> None:
        for name, d in sizes.items():
            known = self._sizes.setdefault(name, d)
            if known != d:
                raise DataError(
                    f"gradient block {name!r} has {d} values but this projector saw it with {known}; use one "
                    "projector per model."
                )

    @abstractmethod
    def _accumulate(self, name: str, g: Tensor, out: Tensor, offset: int) -> None:
        """Add block ``name``'s contribution ``g @ P_name`` ((b, d) @ (d, k)) to ``out`` in place."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


#: Projectors by name.
PROJECTORS: Registry[Projector] = Registry("projector")


class DenseProjector(Projector):
    """Dense random matrices generated in row chunks from ``(seed, kind, block name, chunk)``."""

    kind = "dense"
    config: DenseProjectorConfig

    def __init__(self, config: DenseProjectorConfig | None = None) -> None:
        super().__init__(config if config is not None else DenseProjectorConfig())
        self._cache: dict[str, Tensor] = {}
        self._cached_bytes = 0
        self._warned = False

    @abstractmethod
    def _draw(self, rows: int, gen: torch.Generator) -> Tensor:
        """A (rows, k) float32 chunk of the matrix drawn from ``gen``."""

    def _chunks(self, name: str, d: int) -> Iterator[tuple[int, Tensor]]:
        k = self.config.dim
        rows = max(1, _CHUNK_ELEMENTS // k)
        for c, start in enumerate(range(0, d, rows)):
            n = min(rows, d - start)
            yield start, self._draw(n, torch_generator(self.config.seed, self.kind, name, c))

    def _accumulate(self, name: str, g: Tensor, out: Tensor, offset: int) -> None:
        d, k = g.shape[1], self.config.dim
        cached = self._cache.get(name)
        if cached is None and self._cached_bytes + 4 * d * k <= self.config.cache_mb * 2**20:
            cached = torch.cat([chunk for _, chunk in self._chunks(name, d)])
            self._cache[name] = cached
            self._cached_bytes += 4 * d * k
        if cached is not None:
            out.add_(g @ cached.to(device=g.device, dtype=g.dtype))
            return
        if not self._warned:
            logger.warning(
                "%s projector: the %d x %d matrix exceeds cache_mb=%s; regenerating blocks on every call. "
                "Use the 'sjlt' projector (far faster on a CPU) or raise cache_mb.",
                self.kind,
                d,
                k,
                self.config.cache_mb,
            )
            self._warned = True
        for start, chunk in self._chunks(name, d):
            out.add_(g[:, start : start + chunk.shape[0]] @ chunk.to(device=g.device, dtype=g.dtype))


@PROJECTORS.register("gaussian", config=DenseProjectorConfig)
class GaussianProjector(DenseProjector):
    """Entries i.i.d. N(0, 1/k): TRAK's reference projection."""

    kind = "gaussian"

    def _draw(self, rows: int, gen: torch.Generator) -> Tensor:
        return torch.randn(rows, self.config.dim, generator=gen) / math.sqrt(self.config.dim)


@PROJECTORS.register("rademacher", config=DenseProjectorConfig)
class RademacherProjector(DenseProjector):
    """Entries i.i.d. +-1/sqrt(k) (Achlioptas, 2003)."""

    kind = "rademacher"

    def _draw(self, rows: int, gen: torch.Generator) -> Tensor:
        signs = torch.randint(0, 2, (rows, self.config.dim), generator=gen).to(torch.float32) * 2 - 1
        return signs / math.sqrt(self.config.dim)


@PROJECTORS.register("sjlt", config=SJLTConfig)
class SJLTProjector(Projector):
    """Sparse JL transform: each input coordinate lands in ``nnz`` columns, one per column block, with
    random signs and weight ``1/sqrt(nnz)`` (Kane & Nelson, 2014; ``nnz=1`` is a count-sketch).

    Cost O(d * nnz) per example instead of O(d * k); state: ``nnz`` int64 column indices and signs per
    parameter.
    """

    config: SJLTConfig

    def __init__(self, config: SJLTConfig | None = None) -> None:
        super().__init__(config if config is not None else SJLTConfig())
        self._hashes: dict[str, tuple[Tensor, Tensor]] = {}

    def _hash(self, name: str, d: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if name not in self._hashes:
            c, k = self.config.nnz, self.config.dim
            width = k // c
            gen = torch_generator(self.config.seed, "sjlt", name)
            cols = torch.randint(0, width, (c, d), generator=gen) + torch.arange(c).unsqueeze(1) * width
            signs = (torch.randint(0, 2, (c, d), generator=gen).to(torch.float32) * 2 - 1) / math.sqrt(c)
            self._hashes[name] = (cols, signs)
        cols, signs = self._hashes[name]
        if cols.device != device:
            cols, signs = cols.to(device), signs.to(device)
            self._hashes[name] = (cols, signs)
        return cols, signs

    def _accumulate(self, name: str, g: Tensor, out: Tensor, offset: int) -> None:
        cols, signs = self._hash(name, g.shape[1], g.device)
        for j in range(cols.shape[0]):
            out.index_add_(1, cols[j], g * signs[j].to(g.dtype))


@PROJECTORS.register("identity")
class IdentityProjector(Projector):
    """No projection: the features are the gradients, blocks concatenated in sorted name order.

    Exact but of dimension ``n_params``; for tests and tiny models.
    """

    def __init__(self) -> None:
        super().__init__(None)

    def output_dim(self, sizes: Mapping[str, int]) -> int:
        """The number of gradient values."""
        return sum(int(d) for d in sizes.values())

    def _accumulate(self, name: str, g: Tensor, out: Tensor, offset: int) -> None:
        out[:, offset : offset + g.shape[1]] = g


@dataclasses.dataclass(frozen=True, kw_only=True)
class KroneckerConfig(ProjectorConfig):
    """Settings of the Kronecker-factored projector.

    Attributes:
        k_out: Rows of every layer's output factor ``P_out``; 0: ``ceil(sqrt(dim / n_layers))``.
        k_in: Rows of every layer's input factor ``P_in``; 0: ``ceil(sqrt(dim / n_layers))``.
    """

    k_out: int = 0
    k_in: int = 0

    def validate(self) -> None:
        super().validate()
        require_ints(self, ("k_out", "k_in"), minimum=0)


@PROJECTORS.register("kronecker", config=KroneckerConfig)
class KroneckerProjector(Projector):
    """Kronecker-factored projection, layer by layer (LoGra: Choe et al., 2024, "What is your data worth to
    GPT?", sec. 3).

    A *layer* is the prefix of a block's name (``"down.0.conv.weight"`` and ``"down.0.conv.bias"`` form layer
    ``"down.0.conv"``). Each block is read as a matrix ``G`` of shape ``(d_out, d_in)``: its first dimension
    against the rest (a convolution's ``(out, in / groups, kh, kw)`` weight as ``(out, in / groups * kh * kw)``,
    a bias ``(d_out,)`` as a ``(d_out, 1)`` column). Layer ``l``'s features are ``sum over its blocks of
    P_out G P_in^T``, a ``(k_out, k_in)`` matrix flattened row-major, with ``P_out`` ``(k_out, d_out)`` drawn
    from ``(seed, layer, d_out)`` and shared by the layer's blocks and ``P_in`` ``(k_in, d_in)`` drawn from
    ``(seed, block name, d_in)``, entries i.i.d. N(0, 1/k) as :class:`GaussianProjector`'s (so
    ``E ||P_out G P_in^T||^2 = ||G||^2``). A weight with its bias is thus the Kronecker projection of the
    augmented matrix ``[G_W, g_b]`` (the bias is the weight of a constant input 1, as dattri's LoGra appends a
    column of ones to a Linear layer's input: ``dattri/algorithm/block_projected_if/core/compressor.py`` (dattri 0.3.0),
    ``_setup_linear_projector``; its factors are seeded per module, not per name). The features of the
    layers are concatenated in sorted layer order: dimension ``n_layers * k_out * k_in``, with
    ``k_out = k_in = ceil(sqrt(dim / n_layers))`` unless :class:`KroneckerConfig` fixes them (so at least
    ``dim``).

    ``project`` applies this to explicit per-example gradients (the reference, O(d k) per block).
    ``TRAKAttributor`` never forms them: for ``nn.Linear`` and ``nn.Conv2d`` layers a per-example gradient is
    ``sum over positions of g_out (x) x_in``, so ``P_out G P_in^T = sum_p (P_out g_p)(P_in x_p)^T`` comes from
    one batched forward and backward pass with hooks (:mod:`genprov.attribution.data.kronecker`), which
    equals ``project`` of the exact per-example gradients up to float rounding.
    """

    config: KroneckerConfig

    def __init__(self, config: KroneckerConfig | None = None) -> None:
        super().__init__(config if config is not None else KroneckerConfig())
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._factors: dict[tuple[str, str, int, int], Tensor] = {}

    @staticmethod
    def layer_of(name: str) -> str:
        """The layer of block ``name``: its prefix before the last dot (``""`` for a top-level parameter)."""
        return name.rpartition(".")[0]

    def layout(self, names: Iterable[str]) -> tuple[list[str], int, int]:
        """The sorted layers of blocks ``names`` and the factor rows ``(k_out, k_in)`` for them."""
        layers = sorted({self.layer_of(n) for n in names})
        default = math.ceil(math.sqrt(self.config.dim / max(1, len(layers))))
        return layers, self.config.k_out or default, self.config.k_in or default

    def output_dim(self, sizes: Mapping[str, int]) -> int:
        """``n_layers * k_out * k_in`` for the layers of the blocks in ``sizes``."""
        layers, k_out, k_in = self.layout(sizes)
        return len(layers) * k_out * k_in

    @staticmethod
    def slot(out: Tensor, index: int, k_out: int, k_in: int) -> Tensor:
        """Layer ``index``'s ``(b, k_out, k_in)`` view of the ``(b, n_layers * k_out * k_in)`` features ``out``."""
        size = k_out * k_in
        return out[:, index * size : (index + 1) * size].view(-1, k_out, k_in)

    def out_factor(self, layer: str, d_out: int, k_out: int) -> Tensor:
        """``P_out`` of ``layer``: (k_out, d_out) float32, from ``(seed, "kronecker-out", layer, d_out)``."""
        return self._factor("kronecker-out", layer, d_out, k_out)

    def in_factor(self, block: str, d_in: int, k_in: int) -> Tensor:
        """``P_in`` of block ``block``: (k_in, d_in) float32, from ``(seed, "kronecker-in", block, d_in)``."""
        return self._factor("kronecker-in", block, d_in, k_in)

    def _factor(self, side: str, name: str, d: int, k: int) -> Tensor:
        key = (side, name, d, k)
        if key not in self._factors:
            gen = torch_generator(self.config.seed, side, name, d)
            self._factors[key] = torch.randn(k, d, generator=gen) / math.sqrt(k)
        return self._factors[key]

    def project(self, grads: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Project a batch of per-example gradients (see the class docstring); blocks keep their shapes.

        Returns:
            (b, n_layers * k_out * k_in) features in the gradients' dtype.
        """
        blocks = as_blocks(grads)
        raw = {"": grads} if isinstance(grads, Tensor) else grads
        self._check_shapes({name: tuple(int(s) for s in raw[name].shape[1:]) for name in blocks})
        layers, k_out, k_in = self.layout(blocks)
        first = next(iter(blocks.values()))
        out = torch.zeros(first.shape[0], len(layers) * k_out * k_in, dtype=first.dtype, device=first.device)
        for name, g in blocks.items():
            self._accumulate(name, g, self.slot(out, layers.index(self.layer_of(name)), k_out, k_in), 0)
        return out

    def matrix(self, sizes: Mapping[str, int]) -> Tensor:
        """The explicit ``(sum(sizes), n_layers * k_out * k_in)`` float32 matrix (blocks in sorted name order);
        each block's shape must be known from an earlier :meth:`project`."""
        names = sorted(sizes)
        unknown = [n for n in names if n not in self._shapes]
        if unknown:
            raise DataError(
                f"the kronecker projector reads each block as a matrix and has not seen block {unknown[0]!r}'s shape; "
                "project a batch of its gradients first."
            )
        self._check_sizes({n: int(sizes[n]) for n in names})
        layers, k_out, k_in = self.layout(names)
        rows = []
        for name in names:
            block = torch.zeros(int(sizes[name]), len(layers) * k_out * k_in)
            index = layers.index(self.layer_of(name))
            self._accumulate(name, torch.eye(int(sizes[name])), self.slot(block, index, k_out, k_in), 0)
            rows.append(block)
        return torch.cat(rows)

    def _check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self._check_sizes({name: math.prod(shape) for name, shape in shapes.items()})
        for name, shape in shapes.items():
            known = self._shapes.setdefault(name, shape)
            if known != shape:
                raise DataError(
                    f"gradient block {name!r} has shape {shape} but this projector saw it with {known}; use one "
                    "projector per model."
                )

    def _accumulate(self, name: str, g: Tensor, out: Tensor, offset: int) -> None:
        """Add ``P_out G P_in^T`` of block ``name`` ((b, d) values) to its layer's ``out`` slot (b, k_out, k_in)
        (``offset`` is unused: the blocks of a layer share their slot)."""
        shape = self._shapes[name]
        matrix = g.reshape(g.shape[0], shape[0] if shape else 1, -1)
        p_out = self.out_factor(self.layer_of(name), matrix.shape[1], out.shape[1]).to(g)
        p_in = self.in_factor(name, matrix.shape[2], out.shape[2]).to(g)
        out.add_(p_out @ matrix @ p_in.T)
