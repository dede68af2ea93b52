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
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from genprov.config import Config, is_int, require
from genprov.exceptions import DataError
from genprov.registry import Registry
from genprov.utils.seeding import torch_generator

__all__ = [
    "PROJECTORS",
    "DenseProjector",
    "DenseProjectorConfig",
    "GaussianProjector",
    "IdentityProjector",
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
