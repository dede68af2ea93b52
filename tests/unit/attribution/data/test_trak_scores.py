"""TRAK scores: brute-force reference end to end, primal vs dual, lambda sweep, scoring variants."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genprov.attribution.data.base import EnsembleAttributor
from genprov.attribution.data.trak import SCORINGS, TRAKAttributor, TRAKConfig, query_key
from genprov.exceptions import DataError, NotFittedError
from genprov.models.diffusion import DDPM, DDPMConfig, build_scheduler
from genprov.results import DataAttributionResult
from genprov.storage import read_raw_features
from genprov.utils.seeding import numpy_rng, torch_generator

TINY = DDPMConfig.preset("tiny")


@pytest.fixture(scope="module")
def model() -> DDPM:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return DDPM(TINY).eval()


def _features(n: int, k: int, seed: int = 0) -> np.ndarray:
    return numpy_rng(seed, "features").standard_normal((n, k)).astype(np.float32)


def _fitted(features: np.ndarray, **config: object) -> TRAKAttributor:
    return TRAKAttributor(torch.nn.Linear(1, 1), config=TRAKConfig(**config)).fit_features(features)  # type: ignore[arg-type]


def _explicit(phi_q: np.ndarray, phi: np.ndarray, lam: float) -> np.ndarray:
    phi_q, phi = phi_q.astype(np.float64), phi.astype(np.float64)
    return phi_q @ np.linalg.inv(phi.T @ phi + lam * np.eye(phi.shape[1])) @ phi.T


def _brute_force_features(model: DDPM, attributor: TRAKAttributor, x: torch.Tensor, keys: list) -> np.ndarray:
    """Float64 autograd loop, gradients concatenated, times the projector's explicit matrix."""
    ref = copy.deepcopy(model).double()
    abar = build_scheduler(TINY).alphas_cumprod.to(torch.float64)
    t = torch.tensor(attributor.timesteps)
    noise = attributor.noise(keys, x.shape[1:]).double()
    names = sorted(attributor.parameter_names)
    params = dict(ref.named_parameters())
    matrix = attributor._projector.matrix({n: params[n].numel() for n in names}).double()
    rows = []
    for i in range(len(x)):
        ref.zero_grad()
        a = abar[t].reshape(-1, 1, 1, 1)
        eps = ref(a.sqrt() * x[i : i + 1].double() + (1 - a).sqrt() * noise[i], t)
        (eps - noise[i]).pow(2).flatten(1).mean(1).mean().backward()
        flat = torch.cat([params[n].grad.reshape(-1) for n in names])  # type: ignore[union-attr]
        rows.append(flat @ matrix)
    return torch.stack(rows).numpy()


def test_scores_equal_a_brute_force_reference(model) -> None:
    gen = torch_generator(0, "brute-force")
    train = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    queries = torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1
    config = TRAKConfig(n_timesteps=2, projector="gaussian", proj_dim=16, relative_damping=0.05, seed=3)
    attributor = TRAKAttributor(model, config=config).fit(train)
    phi = _brute_force_features(model, attributor, train, list(range(6)))
    phi_q = _brute_force_features(model, attributor, queries, [query_key(q) for q in queries])
    np.testing.assert_allclose(attributor.train_features_, phi, rtol=2e-3, atol=2e-4 * np.abs(phi).max())
    lam = 0.05 * float((phi**2).sum()) / 16
    expected = _explicit(phi_q, phi, lam)
    got = attributor.scores(queries).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())
    assert attributor.damping_ == pytest.approx(lam, rel=1e-3)


@pytest.mark.parametrize(("n", "k"), [(30, 8), (8, 30)])
def test_primal_and_dual_forms_give_the_explicit_scores(n: int, k: int) -> None:
    phi, phi_q = _features(n, k), _features(3, k, seed=1)
    attributor = _fitted(phi, damping=0.7)
    assert attributor._kernel["dual"] == (k > n)
    expected = _explicit(phi_q, phi, 0.7)
    np.testing.assert_allclose(attributor.scores_from_features(phi_q), expected, rtol=1e-9, atol=1e-12)
    dual = (
        phi_q.astype(np.float64)
        @ phi.T.astype(np.float64)
        @ np.linalg.inv(phi.astype(np.float64) @ phi.T.astype(np.float64) + 0.7 * np.eye(n))
    )
    np.testing.assert_allclose(expected, dual, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize(("n", "k"), [(20, 6), (6, 20)])
def test_scoring_variants_match_their_formulas_and_the_sweep(scoring: str, n: int, k: int) -> None:
    phi, phi_q = _features(n, k), _features(4, k, seed=2)
    lam = 0.3
    attributor = _fitted(phi, damping=lam, scoring=scoring)
    p, q = phi.astype(np.float64), phi_q.astype(np.float64)
    trak = _explicit(q, p, lam)
    inv = np.linalg.inv(p.T @ p + lam * np.eye(k))
    expected = {
        "trak": trak,
        "grad-dot": q @ p.T,
        "grad-cos": (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T,
        "relative-if": trak / np.sqrt(np.einsum("ij,jk,ik->i", p, inv, p))[None, :],
        "renormalized-if": trak / np.linalg.norm(p, axis=1)[None, :],
    }[scoring]
    np.testing.assert_allclose(attributor.scores_from_features(phi_q), expected, rtol=1e-8, atol=1e-10)
    sweep = attributor.scores_sweep(phi_q, [lam, 2 * lam])
    np.testing.assert_allclose(sweep[0], expected, rtol=1e-7, atol=1e-9)
    if scoring not in ("grad-dot", "grad-cos"):
        other = _fitted(phi, damping=2 * lam, scoring=scoring).scores_from_features(phi_q)
        np.testing.assert_allclose(sweep[1], other, rtol=1e-7, atol=1e-9)


def test_the_default_lambda_is_scale_free() -> None:
    phi, phi_q = _features(12, 5), _features(2, 5, seed=3)
    a = _fitted(phi).scores_from_features(phi_q)
    b = _fitted(phi * 10).scores_from_features(phi_q * 10)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    attributor = _fitted(phi, relative_damping=0.5)
    assert attributor.damping_ == pytest.approx(0.5 * float((phi.astype(np.float64) ** 2).sum()) / 5)
    assert attributor.absolute_damping(1.0) == pytest.approx(2 * attributor.damping_)


def test_a_singular_kernel_without_damping_says_so() -> None:
    phi = np.repeat(_features(1, 6), 4, axis=0)
    with pytest.raises(DataError, match="singular"):
        _fitted(phi, damping=0.0)


def test_attribute_top_k_and_not_fitted(model) -> None:
    attributor = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2, proj_dim=32))
    with pytest.raises(NotFittedError):
        attributor.scores(torch.zeros(1, 1, 8, 8))
    train = torch.rand(7, 1, 8, 8, generator=torch_generator(1, "train")) * 2 - 1
    attributor.fit(train)
    result = attributor.attribute(train[:2], k=3)
    assert isinstance(result, DataAttributionResult) and result.method == "trak"
    assert result.indices.shape == (2, 3) and (np.diff(result.scores, axis=1) <= 0).all()
    full = attributor.scores(train[:2]).numpy()
    np.testing.assert_allclose(result.scores, np.sort(full, axis=1)[:, ::-1][:, :3], rtol=1e-6)
    assert result.config["proj_dim"] == 32
    torch.testing.assert_close(attributor.scores(train[1:2]), attributor.scores(train[:2])[1:2], rtol=1e-4, atol=1e-6)


def test_ensemble_averages_member_scores(model, tmp_path) -> None:
    train = torch.rand(5, 1, 8, 8, generator=torch_generator(2, "train")) * 2 - 1
    configs = [TRAKConfig(n_timesteps=2, proj_dim=16, seed=s, scoring="grad-dot") for s in (0, 1)]
    members = [TRAKAttributor(model, config=c) for c in configs]
    ensemble = EnsembleAttributor(members).fit(train, store=tmp_path / "ens")
    assert (tmp_path / "ens" / "member-1" / "manifest.json").is_file()
    expected = (members[0].scores(train[:2]) + members[1].scores(train[:2])) / 2
    torch.testing.assert_close(ensemble.scores(train[:2]), expected)
    assert ensemble.featurize(train[:2], torch.arange(2)).shape == (2, 32)
    assert ensemble.attribute(train[:1], k=2).method == "ensemble[grad-dot[loss]]"


def test_dtrak_raw_feature_files_can_be_scored(tmp_path) -> None:
    phi = _features(9, 4)
    raw = np.memmap(tmp_path / "train.mmap", dtype=np.float32, mode="w+", shape=phi.shape)
    raw[:] = phi
    raw.flush()
    attributor = _fitted(read_raw_features(tmp_path / "train.mmap", 4), damping=0.1)
    np.testing.assert_allclose(attributor.scores_from_features(phi[:2]), _explicit(phi[:2], phi, 0.1), rtol=1e-9)
    with pytest.raises(DataError, match=r"\(n_queries, 4\)"):
        attributor.scores_from_features(phi[:, :3])
