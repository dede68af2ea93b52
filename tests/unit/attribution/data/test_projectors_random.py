"""Random projectors: JL norms, explicit matrices, block separability, caching, determinism."""

from __future__ import annotations

import pytest
import torch

from genprov.attribution.data.projectors import (
    PROJECTORS,
    DenseProjectorConfig,
    GaussianProjector,
    IdentityProjector,
    SJLTConfig,
    SJLTProjector,
)
from genprov.exceptions import ConfigError, DataError
from genprov.utils.seeding import torch_generator

SIZES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "lin.weight": (5, 4)}


def _grads(b: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch_generator(seed, "grads")
    return {name: torch.randn(b, *shape, generator=gen, dtype=dtype) for name, shape in SIZES.items()}


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in sorted(grads)], dim=1)


def _sizes() -> dict[str, int]:
    return {n: int(torch.Size(s).numel()) for n, s in SIZES.items()}


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sjlt"])
def test_random_projections_preserve_norms_and_inner_products(name: str) -> None:
    proj = PROJECTORS.create(name, config={"dim": 4096, "seed": 1})
    g = _grads(16, dtype=torch.float64)
    flat = _flat(g)
    phi = proj.project(g)
    assert phi.shape == (16, 4096) and phi.dtype == torch.float64
    ratio = phi.norm(dim=1) / flat.norm(dim=1)
    assert float((ratio - 1).abs().max()) < 0.1
    gram, approx = flat @ flat.T, phi @ phi.T
    scale = flat.norm(dim=1).max() ** 2
    assert float((gram - approx).abs().max() / scale) < 0.1


@pytest.mark.parametrize(
    ("name", "config"), [("gaussian", {"dim": 64}), ("rademacher", {"dim": 64}), ("sjlt", {"dim": 64, "nnz": 4})]
)
def test_projection_equals_its_explicit_matrix(name: str, config: dict[str, int]) -> None:
    proj = PROJECTORS.create(name, config=config)
    g = _grads(5, dtype=torch.float64)
    matrix = proj.matrix(_sizes())
    assert matrix.shape == (sum(_sizes().values()), 64)
    torch.testing.assert_close(proj.project(g), _flat(g) @ matrix.to(torch.float64), rtol=1e-6, atol=1e-9)


def test_sjlt_matrix_is_a_sparse_sign_matrix() -> None:
    proj = SJLTProjector(SJLTConfig(dim=12, nnz=3, seed=2))
    matrix = proj.matrix({"w": 50})
    nonzero = matrix != 0
    assert nonzero.sum(dim=1).eq(3).all()  # one entry in each of the 3 column blocks
    for block in range(3):
        assert nonzero[:, block * 4 : (block + 1) * 4].sum(dim=1).eq(1).all()
    torch.testing.assert_close(matrix[nonzero].abs(), torch.full((150,), 3**-0.5))


def test_projection_is_block_separable_and_filter_stable() -> None:
    proj = PROJECTORS.create("sjlt", config={"dim": 32})
    g = _grads(3)
    alone = PROJECTORS.create("sjlt", config={"dim": 32}).project({"lin.weight": g["lin.weight"]})
    rest = PROJECTORS.create("sjlt", config={"dim": 32}).project({k: v for k, v in g.items() if k != "lin.weight"})
    torch.testing.assert_close(proj.project(g), alone + rest)


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sjlt"])
def test_seeded_and_batch_independent(name: str) -> None:
    g = _grads(6)
    a = PROJECTORS.create(name, config={"dim": 16, "seed": 3}).project(g)
    b = PROJECTORS.create(name, config={"dim": 16, "seed": 3})
    one_by_one = torch.cat([b.project({k: v[i : i + 1] for k, v in g.items()}) for i in range(6)])
    torch.testing.assert_close(a, one_by_one, rtol=1e-5, atol=1e-6)
    other = PROJECTORS.create(name, config={"dim": 16, "seed": 4}).project(g)
    assert not torch.allclose(a, other)


def test_uncached_dense_blocks_equal_cached_ones(caplog: pytest.LogCaptureFixture) -> None:
    g = _grads(4)
    cached = GaussianProjector(DenseProjectorConfig(dim=20, seed=5)).project(g)
    uncached_proj = GaussianProjector(DenseProjectorConfig(dim=20, seed=5, cache_mb=0))
    with caplog.at_level("WARNING"):
        uncached = uncached_proj.project(g)
        uncached_proj.project(g)
    torch.testing.assert_close(cached, uncached)
    assert sum("sjlt" in r.message for r in caplog.records) == 1  # warned once


def test_identity_concatenates_blocks_in_name_order() -> None:
    g = _grads(2)
    proj = IdentityProjector()
    torch.testing.assert_close(proj.project(g), _flat(g))
    assert proj.output_dim(_sizes()) == sum(_sizes().values())
    torch.testing.assert_close(proj.matrix(_sizes()), torch.eye(sum(_sizes().values())))


def test_errors() -> None:
    proj = PROJECTORS.create("sjlt", config={"dim": 8})
    proj.project({"w": torch.randn(2, 5)})
    with pytest.raises(DataError, match="saw it with 5"):
        proj.project({"w": torch.randn(2, 6)})
    with pytest.raises(DataError, match="same batch size"):
        proj.project({"a": torch.randn(2, 3), "b": torch.randn(3, 3)})
    with pytest.raises(DataError, match="at least one"):
        proj.project({})
    with pytest.raises(ConfigError, match="nnz"):
        SJLTConfig(dim=10, nnz=3)
    with pytest.raises(ConfigError, match="Did you mean 'sjlt'"):
        PROJECTORS.entry("sjl")
