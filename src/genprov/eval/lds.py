"""Linear datamodeling score (LDS) benchmark and counterfactual evaluation of data attribution.

The protocol of Park et al., 2023 ("TRAK", def. 2.3) as used for diffusion models by Zheng et al., 2024
("Intriguing properties of data attribution on diffusion models", sec. 4, sec. 5.2, app. B):

- :class:`LDSBenchmark` holds the ground truth: which training examples each random subset held, and
  the diffusion loss (:func:`measure_losses` over fixed :class:`EvalDraws`; :func:`measure_conditional_losses`
  for a text-to-image model, each query given its prompt) of models trained on each subset on every query. The
  model output is ``-loss``.
- :func:`evaluate_lds` scores attribution methods on it, choosing lambda on validation queries and
  reporting the others, with bootstrap intervals, paired differences and the :func:`noise_ceiling`;
  :func:`lds_vs_benchmark_size` repeats it on smaller parts of the benchmark.
- :func:`counterfactual_removals` and :func:`counterfactual_metrics`: remove each method's top-k
  influencers of a generated image (or k random images), retrain, regenerate from the same noise, and
  measure how far the new image moved. Training the models is the caller's job.

Used by ``genprov trak lds``, ``genprov reproduce dtrak`` and ``genprov reproduce dtrak-t2i``; the benchmark's
subset models are trained by :mod:`genprov.eval.lds_benchmark` (``genprov trak lds-benchmark``, ``reproduce dtrak``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genprov.data import ConditionedExamples, split_indices
from genprov.data.dataset import fingerprint_arrays
from genprov.eval.data_attribution import lds_summary, linear_datamodeling_score
from genprov.eval.stats import MeanCI, paired_difference_ci, summarize
from genprov.exceptions import DataError
from genprov.models.diffusion import DDPM
from genprov.utils.io import atomic_save_npz, open_npz
from genprov.utils.seeding import numpy_rng, torch_generator

__all__ = [
    "PAIRS",
    "QUERY_KINDS",
    "EvalDraws",
    "LDSBenchmark",
    "counterfactual_metrics",
    "counterfactual_removals",
    "evaluate_lds",
    "lds_vs_benchmark_size",
    "measure_conditional_losses",
    "measure_losses",
    "noise_ceiling",
    "pixel_similarity",
]

#: Query kinds, in report order (other kinds follow, sorted).
QUERY_KINDS = ("real", "generated")
#: The method pairs :func:`evaluate_lds` reports paired differences for (when both are scored).
PAIRS: tuple[tuple[str, str], ...] = (("D-TRAK", "TRAK"), ("D-TRAK", "pixel similarity"), ("TRAK", "pixel similarity"))


# ------------------------------------------------------------------------------------------ measuring


@dataclasses.dataclass(frozen=True)
class EvalDraws:
    """Fixed (timestep, noise) pairs per query: the LDS model output is the mean loss over them.

    Attributes:
        queries: (n_q, C, H, W) query images.
        t: (n_q, J) int64 timesteps (stratified over [0, T)).
        noise: (n_q, J, C, H, W) standard normal noise.
    """

    queries: Tensor
    t: Tensor
    noise: Tensor

    @classmethod
    def make(cls, queries: Tensor, draws: int, n_timesteps: int, seed: int) -> EvalDraws:
        """Draws for ``queries``: draw j of query q at ``t = (j + u) T / J`` (u uniform), noise from ``(seed, q, j)``."""
        n_q = len(queries)
        gen = torch_generator(seed, "lds-eval-t")
        offsets = torch.rand(n_q, draws, generator=gen)
        t = ((torch.arange(draws).unsqueeze(0) + offsets) * n_timesteps / draws).long().clamp_(0, n_timesteps - 1)
        noise = torch.empty(n_q, draws, *queries.shape[1:])
        for q in range(n_q):
            noise[q] = torch.randn(draws, *queries.shape[1:], generator=torch_generator(seed, "lds-eval", q))
        return cls(queries, t, noise)

    def fingerprint(self) -> str:
        """Hash of the queries and draws (keys the per-model loss cache)."""
        return fingerprint_arrays(self.queries.numpy(), self.t.numpy(), self.noise.numpy())


#: ``predict(x0, noise, t, q) -> eps``: the noise a model predicts for queries ``q`` (their indices) noised to
#: timesteps ``t``; what :func:`_draw_losses` averages over the draws.
_Predict = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _draw_losses(draws: EvalDraws, batch_size: int, predict: _Predict) -> np.ndarray:
    """``mean_j ||predict(x0_q, eps_j, t_j, q) - eps_j||^2 / d`` per query, ``batch_size`` draws per call."""
    n_q, n_draws = draws.t.shape
    shape = draws.queries.shape[1:]
    x0 = draws.queries.unsqueeze(1).expand(-1, n_draws, *shape).reshape(-1, *shape)
    t = draws.t.reshape(-1)
    noise = draws.noise.reshape(-1, *shape)
    losses = torch.empty(len(t))
    for start in range(0, len(t), batch_size):
        sl = slice(start, start + batch_size)
        query = torch.arange(sl.start, min(sl.stop, len(t))) // n_draws
        eps = predict(x0[sl], noise[sl], t[sl], query)
        losses[sl] = (eps - noise[sl]).pow(2).flatten(1).mean(1)
    return losses.reshape(n_q, n_draws).mean(1).double().numpy()


@torch.no_grad()
def measure_losses(model: DDPM, draws: EvalDraws, *, batch_size: int = 1024) -> np.ndarray:
    """Per-query diffusion loss ``mean_j ||eps_theta(x_{t_j}, t_j) - eps_j||^2 / d`` over fixed draws.

    Args:
        model: The DDPM.
        draws: Queries and their fixed (timestep, noise) pairs.
        batch_size: Images per forward pass (does not change the numbers beyond rounding).

    Returns:
        (n_q,) float64 mean losses; lower = the model fits the query better.
    """
    model.eval()
    return _draw_losses(draws, batch_size, lambda x0, noise, t, _q: model(model.add_noise(x0, noise, t), t))


@torch.no_grad()
def measure_conditional_losses(
    denoiser: nn.Module, examples: ConditionedExamples, draws: EvalDraws, *, scheduler: Any, batch_size: int = 256
) -> np.ndarray:
    """:func:`measure_losses` for a conditional latent denoiser: each query's loss given its own context.

    The loss of D-TRAK's ArtBench LDS (``ArtBench2/eval_text_to_image_lora.py:713-740``: the latent is the VAE
    posterior's mode times ``scaling_factor``, noised by ``add_noise`` at fixed timesteps and seeded noise, the
    per-example MSE of the noise prediction given the caption's text embeddings), averaged over ``draws``.

    Args:
        denoiser: ``forward(x_t, t, context) -> eps`` (``genprov.models.t2i.LatentDenoiser``).
        examples: The queries' latents and contexts (``genprov.models.t2i.encode_examples`` with their prompts).
        draws: Fixed (timestep, noise) pairs made for ``examples.latents`` (:meth:`EvalDraws.make`).
        scheduler: The pipeline's scheduler (its ``alphas_cumprod`` noises the latents).
        batch_size: Latents per forward pass (does not change the numbers beyond rounding).

    Returns:
        (n_q,) float64 mean losses; lower = the model fits the query better.

    Raises:
        DataError: ``draws`` were made for other latents than ``examples``'.
    """
    if draws.queries.shape != examples.latents.shape or not torch.equal(draws.queries, examples.latents):
        raise DataError(
            f"The draws were made for other latents ({tuple(draws.queries.shape)}) than the examples' "
            f"({tuple(examples.latents.shape)}); make them with EvalDraws.make(examples.latents, ...)."
        )
    denoiser.eval()
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)

    def predict(x0: Tensor, noise: Tensor, t: Tensor, query: Tensor) -> Tensor:
        a = abar[t].reshape(-1, *([1] * (x0.ndim - 1)))
        return denoiser(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, examples.context[query])

    return _draw_losses(draws, batch_size, predict)


def pixel_similarity(queries: Tensor, train: Tensor) -> np.ndarray:
    """Raw-pixel baseline scores ``-||x_q - x_i||^2``: (n_q, n_train) float64, higher = more similar."""
    q = queries.reshape(len(queries), -1).double()
    x = train.reshape(len(train), -1).double()
    return (-torch.cdist(q, x).pow(2)).numpy()


# ------------------------------------------------------------------------------------------ LDS


@dataclasses.dataclass(frozen=True)
class LDSBenchmark:
    """The ground truth of an LDS evaluation.

    Attributes:
        masks: (n_subsets, n_train) bool, True where a training example is in the subset.
        losses: (n_subsets, n_seeds, n_q) measured diffusion losses of the subset models on the queries.
        queries: (n_q, C, H, W) query images.
        kinds: (n_q,) query kind per query (``"real"`` or ``"generated"``).
        val: (n_q,) bool, True for queries that choose lambda (the others are reported).
    """

    masks: np.ndarray
    losses: np.ndarray
    queries: np.ndarray
    kinds: np.ndarray
    val: np.ndarray

    @classmethod
    def empty(cls, queries: np.ndarray, kinds: np.ndarray) -> LDSBenchmark:
        """A benchmark of queries without subsets yet (to draw the validation split)."""
        n_q = len(queries)
        return cls(np.zeros((0, 0), dtype=bool), np.zeros((0, 1, n_q)), queries, kinds, np.zeros(n_q, dtype=bool))

    def outputs(self) -> np.ndarray:
        """The LDS model output per subset and query, ``-mean over seeds of the loss``: (n_subsets, n_q)."""
        return np.asarray(-self.losses.mean(axis=1))

    def with_validation_split(self, seed: int) -> LDSBenchmark:
        """This benchmark, with half of each query kind marked for choosing lambda if none is marked yet."""
        if self.val.any():
            return self
        val = np.zeros(len(self.kinds), dtype=bool)
        for kind in sorted(set(self.kinds.tolist())):
            cols = np.flatnonzero(self.kinds == kind)
            val[cols[split_indices(len(cols), [0.5, 0.5], seed=seed)[0]]] = True
        return dataclasses.replace(self, val=val)

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (atomically)."""
        atomic_save_npz(
            path,
            {
                "masks": self.masks,
                "losses": self.losses,
                "queries": self.queries,
                "kinds": self.kinds.astype("U16"),
                "val": self.val,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> LDSBenchmark:
        """Read :meth:`save` output (no pickles).

        Raises:
            DataError: If the file is missing or lacks a key, or the shapes disagree.
        """
        file = Path(path)
        if not file.is_file():
            raise DataError(
                f"{file} does not exist; build a benchmark with 'genprov trak lds-benchmark' (or 'genprov reproduce "
                "dtrak') first."
            )
        with open_npz(file, "an LDS benchmark") as npz:
            missing = [k for k in ("masks", "losses", "queries") if k not in npz.files]
            if missing:
                raise DataError(f"{file} is not an LDS benchmark: it lacks {missing}.")
            n_q = npz["queries"].shape[0]
            kinds = npz["kinds"] if "kinds" in npz.files else np.array(["real"] * n_q)
            val = npz["val"] if "val" in npz.files else np.zeros(n_q, dtype=bool)
            bench = cls(npz["masks"].astype(bool), npz["losses"], npz["queries"], kinds, val.astype(bool))
        if bench.losses.ndim == 2:
            bench = dataclasses.replace(bench, losses=bench.losses[:, None, :])
        if bench.losses.shape[0] != bench.masks.shape[0] or bench.losses.shape[2] != n_q:
            raise DataError(
                f"{file}: losses {bench.losses.shape} must be (n_subsets={bench.masks.shape[0]}, n_seeds, n_q={n_q})."
            )
        return bench


def noise_ceiling(losses: np.ndarray, columns: np.ndarray, *, seed: int, n_boot: int) -> MeanCI | None:
    """Mean over queries of the Spearman correlation, across subsets, of seed 0's and seed 1's losses.

    Args:
        losses: (n_subsets, n_seeds, n_q).
        columns: Queries to use.
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.

    Returns:
        The ceiling with a CI over queries, or ``None`` with fewer than two seeds.
    """
    if losses.shape[1] < 2 or len(columns) == 0:
        return None
    masks = np.eye(losses.shape[0], dtype=bool)  # "scores" = seed 0's outputs; each subset holds one item
    per_query = linear_datamodeling_score(-losses[:, 0, columns].T, masks, -losses[:, 1, columns])
    return lds_summary(per_query, seed=seed, n_boot=n_boot, ignore_nan=True)


def _subset_ci(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray, *, seed: int, n_boot: int) -> list[float]:
    """95% bootstrap interval of the mean LDS when the subsets (rows) are resampled."""
    rng = numpy_rng(seed, "lds-subsets")
    means = []
    for _ in range(n_boot):
        rows = rng.integers(0, masks.shape[0], size=masks.shape[0])
        per_query = linear_datamodeling_score(scores, masks[rows], outputs[rows])
        if np.isfinite(per_query).any():
            means.append(float(np.nanmean(per_query)))
    return [float(v) for v in np.quantile(means, [0.025, 0.975])] if means else [float("nan")] * 2


def evaluate_lds(
    method_scores: Mapping[str, np.ndarray],
    bench: LDSBenchmark,
    *,
    dampings: Sequence[float] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """LDS of each method per query kind, lambda chosen on the validation queries, reported on the rest.

    Args:
        method_scores: ``{method: (n_lambda, n_q, n_train)}`` scores (``n_lambda = 1`` for methods without
            a lambda); higher = more positive influence.
        bench: The benchmark (masks, losses, kinds, validation split).
        dampings: The lambda values of the sweeps (labels in the output; relative values).
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.

    Returns:
        ``{"methods": {kind: {method: {...}}}, "paired": ..., "noise_ceiling": ..., "sweep": ...}``; every
        reported LDS uses only lambda chosen on validation queries.
    """
    outputs = bench.outputs()
    results: dict[str, Any] = {"methods": {}, "paired": {}, "noise_ceiling": {}, "sweep": {}}
    per_query_best: dict[str, dict[str, np.ndarray]] = {}
    for kind in sorted(set(bench.kinds.tolist()), key=lambda k: (k not in QUERY_KINDS, k)):
        in_kind = bench.kinds == kind
        val_cols, test_cols = np.flatnonzero(in_kind & bench.val), np.flatnonzero(in_kind & ~bench.val)
        if len(test_cols) == 0:
            continue
        rows: dict[str, Any] = {}
        sweeps: dict[str, Any] = {}
        per_query_best[kind] = {}
        for method, scores in method_scores.items():
            scores = np.asarray(scores)
            if scores.ndim == 2:
                scores = scores[None]
            val_curve = [
                float(np.nanmean(linear_datamodeling_score(s[val_cols], bench.masks, outputs[:, val_cols])))
                if len(val_cols)
                else float("nan")
                for s in scores
            ]
            test_curve = [
                float(np.nanmean(linear_datamodeling_score(s[test_cols], bench.masks, outputs[:, test_cols])))
                for s in scores
            ]
            best = int(np.nanargmax(val_curve)) if np.isfinite(val_curve).any() else 0
            per_query = linear_datamodeling_score(scores[best][test_cols], bench.masks, outputs[:, test_cols])
            per_query_best[kind][method] = per_query
            summary = lds_summary(per_query, seed=seed, n_boot=n_boot, ignore_nan=True)
            rows[method] = {
                "lds": summary.to_dict(),
                "ci_over_subsets": _subset_ci(
                    scores[best][test_cols], bench.masks, outputs[:, test_cols], seed=seed, n_boot=max(50, n_boot // 10)
                ),
                "val_lds": val_curve[best],
                "lambda_index": best,
                "relative_damping": None if len(scores) == 1 or dampings is None else float(dampings[best]),
            }
            if len(scores) > 1:
                sweeps[method] = {"relative_damping": list(dampings or []), "val": val_curve, "test": test_curve}
        results["methods"][kind] = rows
        results["sweep"][kind] = sweeps
        ceiling = noise_ceiling(bench.losses, test_cols, seed=seed, n_boot=n_boot)
        results["noise_ceiling"][kind] = ceiling.to_dict() if ceiling is not None else None
        results["paired"][kind] = _paired(per_query_best[kind], seed=seed, n_boot=n_boot)
    return results


def _paired(per_query: Mapping[str, np.ndarray], *, seed: int, n_boot: int) -> dict[str, Any]:
    """Paired bootstrap differences ``a - b`` over queries for the :data:`PAIRS` that were both scored."""
    out = {}
    for a, b in PAIRS:
        if a in per_query and b in per_query:
            ok = np.isfinite(per_query[a]) & np.isfinite(per_query[b])
            if ok.sum() >= 2:
                diff = paired_difference_ci(per_query[a][ok], per_query[b][ok], seed=seed, n_boot=n_boot)
                out[f"{a} - {b}"] = diff.to_dict()
    return out


def lds_vs_benchmark_size(
    method_scores: Mapping[str, np.ndarray],
    bench: LDSBenchmark,
    *,
    dampings: Sequence[float],
    seed: int = 0,
    methods: Sequence[str] = ("TRAK", "D-TRAK", "pixel similarity"),
) -> list[dict[str, Any]]:
    """Mean test LDS when only the first m subsets and s seeds of the benchmark are used.

    Shows how much of the gap between methods is ground-truth noise: with few subsets or one seed per
    subset the measured outputs are noisier and every LDS (and the noise ceiling) is lower.

    Returns:
        Rows ``{"subsets", "seeds", "<kind> <method>": mean LDS, "<kind> ceiling": ...}``.
    """
    n_subsets, n_seeds = bench.masks.shape[0], bench.losses.shape[1]
    sizes = sorted({m for m in (8, 16, 32, 64, 128, n_subsets) if 3 <= m <= n_subsets})
    rows = []
    for m in sizes:
        for s in sorted({1, n_seeds}):
            part = dataclasses.replace(bench, masks=bench.masks[:m], losses=bench.losses[:m, :s])
            scores = {k: method_scores[k] for k in methods if k in method_scores}
            ev = evaluate_lds(scores, part, dampings=dampings, seed=seed, n_boot=100)
            row: dict[str, Any] = {"subsets": m, "seeds": s}
            for kind, per_method in ev["methods"].items():
                for method, r in per_method.items():
                    row[f"{kind} {method}"] = r["lds"]["mean"]
                ceiling = ev["noise_ceiling"].get(kind)
                row[f"{kind} ceiling"] = ceiling["mean"] if ceiling else None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ counterfactual


def counterfactual_removals(
    scores: Mapping[str, np.ndarray], columns: Sequence[int], *, k: int, n_train: int, seed: int
) -> dict[str, list[np.ndarray]]:
    """The training examples to remove per method and query: each method's top ``k``, and ``k`` random ones.

    Args:
        scores: ``{method: (n_q, n_train)}`` scores at the chosen lambda; higher = more positive influence.
        columns: Query columns of the generated images tested, in order.
        k: Examples removed per retrain, ``1 <= k < n_train``.
        n_train: Size of the training set.
        seed: Seed of the random baseline (query ``g`` of ``columns`` draws from ``(seed, g)``).

    Returns:
        ``{"random": [...], method: [...]}``: per method, one (k,) index array per entry of ``columns``.
    """
    if not 1 <= k < n_train:
        raise DataError(f"k (images removed) must be in [1, n_train={n_train}); got {k}.")
    removals: dict[str, list[np.ndarray]] = {"random": []}
    for g, column in enumerate(columns):
        for method, method_scores in scores.items():
            order = np.argsort(-np.asarray(method_scores)[column], kind="stable")
            removals.setdefault(method, []).append(order[:k])
        removals["random"].append(numpy_rng(seed, "counterfactual-random", g).choice(n_train, k, replace=False))
    return removals


@torch.no_grad()
def counterfactual_metrics(
    originals: Tensor,
    regenerated: Mapping[str, Tensor],
    features: Callable[[Tensor], Tensor],
    *,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """How far regenerated images moved from the originals after retraining without some examples.

    Args:
        originals: (n, C, H, W) the generated images before removal.
        regenerated: ``{method: (n, C, H, W)}`` the same noise regenerated by the retrained models.
        features: Feature extractor for the cosine (e.g. a classifier's penultimate layer).
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.

    Returns:
        ``{method: {"pixel_l2": CI, "feature_cosine": CI, "per_query_l2": [...]}}``; a larger l2 (lower
        cosine) = the removed examples mattered more.
    """
    out: dict[str, Any] = {}
    reference = features(originals).flatten(1)
    for method, new in regenerated.items():
        if new.shape != originals.shape:
            raise DataError(f"regenerated[{method!r}] has shape {tuple(new.shape)}; expected {tuple(originals.shape)}.")
        l2 = (new - originals).flatten(1).norm(dim=1).double().numpy()
        cos = torch.nn.functional.cosine_similarity(features(new).flatten(1), reference, dim=1)
        out[method] = {
            "pixel_l2": summarize(l2, seed=seed, n_boot=n_boot).to_dict(),
            "feature_cosine": summarize(cos.double().numpy(), seed=seed, n_boot=n_boot).to_dict(),
            "per_query_l2": l2.tolist(),
        }
    return out
