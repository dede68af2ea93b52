"""TRAK / D-TRAK featurization on a CPU: genprov vs traker vs dattri vs a per-example autograd loop.

All methods featurize the same training images of the same ~1M-parameter DDPM (``DDPMConfig.preset("base",
layers_per_block=2)``, 16x16 digits, random seeded weights) with the same output (TRAK's diffusion loss
averaged over K=10 timesteps with the same noise per example), project to k dimensions and score the
same queries with the same lambda. Each run of a method is its own spawned single-threaded process (so its
peak memory is its own); timings exclude imports and model construction. The timed methods run
interleaved (floor, genprov, genprov hooks, genprov loop, loop, traker, dattri, floor, ...) three times
(:mod:`benchmarks.timing`):
the table gives the median seconds per example with the range, ratios of medians, the median peak, and
the load average before and after (flagged when it moved by more than 0.5).

- **floor**: one plain batched forward + backward pass over the B x K noisy images of each batch of the
  training set, per example (what any per-example-gradient method must at least pay).
- **genprov**: ``TRAKAttributor`` as a user gets it (``per_example="auto"``: on this DDPM, whose parameters are all
  ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GroupNorm``, the hooks; the mode is in the table), sjlt projection block by
  block.
- **genprov hooks**: ``per_example="hooks"``: the exact per-example gradients of a batch of 16 from ONE batched
  forward + backward pass over its B x K rows with module hooks (``kronecker.per_example_gradients``).
- **genprov loop**: ``per_example="loop"``: one backward pass per example (its K rows batched), genprov's path
  for large models before the hooks.
- **autograd loop**: one backward per example, gradients concatenated, the same sjlt projection.
- **traker**: ``TRAKer`` on CPU (``BasicProjector``, Gaussian, float32), a custom ``AbstractModelOutput``
  computing the same loss, ``out_to_loss`` = 1 (no Q term, as in D-TRAK).
- **dattri**: ``dattri.algorithm.trak.TRAKAttributor`` with the same loss and Q = 1.

Agreement is the Spearman correlation of each method's (n_queries x n_train) scores with the exact scores
(identity projection, float64 kernel). Peak memory is the process's high-water RSS (``VmHWM``, reset
after set-up through ``/proc/self/clear_refs``) above its RSS after set-up. Every method runs after one
plain forward + backward pass (allocator and oneDNN warm-up); genprov's vmap path is warmed on two
examples (and the hooks on two). Peers that are not installed are reported as such (install them without their extras, e.g.
``pip install --no-deps traker dattri``; neither needs torchvision for this).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.memory import reset_peak, status_mb
from benchmarks.peers import traker_run
from benchmarks.timing import in_child, spawned_trials

N_TIMESTEPS = 10
BATCH = 16


def _setup(n_train: int, n_queries: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    from genprov.data import load_dataset
    from genprov.models.diffusion import DDPM, DDPMConfig

    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DDPM(DDPMConfig.preset("base", layers_per_block=2)).eval()
    train = load_dataset("digits", split="train", resize=16, n=n_train, seed=0).images
    queries = load_dataset("digits", split="test", resize=16, n=n_queries, seed=0).images
    return model, train, queries


def _warm_up(model: Any, train: torch.Tensor) -> None:
    """One plain forward + backward (allocator, oneDNN kernels) so no method pays first-call costs."""
    t = torch.arange(0, 1000, 1000 // N_TIMESTEPS).repeat(BATCH)
    x = train[:BATCH].repeat_interleave(N_TIMESTEPS, 0)
    model.zero_grad()
    model(x, t).pow(2).mean().backward()
    model.zero_grad()


def _attributor(model: Any, k: int, damping: float, projector: str = "sjlt", per_example: str = "auto") -> Any:
    from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig

    config = TRAKConfig(
        n_timesteps=N_TIMESTEPS,
        projector=projector,
        proj_dim=k,
        damping=damping,
        batch_size=BATCH,
        seed=0,
        per_example=per_example,
    )
    return TRAKAttributor(model, config=config)


def _noise(model: Any, train: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-example noise genprov draws (training examples by index, queries by pixel hash)."""
    from genprov.attribution.data.trak import query_key

    helper = _attributor(model, 8, 1.0)
    shape = train.shape[1:]
    return helper.noise(list(range(len(train))), shape), helper.noise([query_key(q) for q in queries], shape)


def _example_loss(model: Any, params: Any, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """TRAK's output for one example: mean over the K uniform timesteps of the denoising loss."""
    t = torch.arange(0, 1000, 1000 // N_TIMESTEPS)
    abar = model.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0.unsqueeze(0) + (1 - abar).sqrt() * noise
    eps = torch.func.functional_call(model, params, (x_t, t))
    return (eps - noise).pow(2).flatten(1).mean(1).mean()


def _floor(model: Any, train: torch.Tensor, noise: torch.Tensor) -> dict[str, Any]:
    """One batched forward + backward per batch of the training set (the noisy inputs made before timing)."""
    batches = []
    for s in range(0, len(train), BATCH):
        x0 = train[s : s + BATCH].repeat_interleave(N_TIMESTEPS, 0)
        t = torch.arange(0, 1000, 1000 // N_TIMESTEPS).repeat(len(x0) // N_TIMESTEPS)
        eps = noise[s : s + BATCH].reshape(-1, *train.shape[1:])
        batches.append((model.add_noise(x0, eps, t), t, eps))
    start = time.perf_counter()
    for x_t, t, eps in batches:
        model.zero_grad()
        (model(x_t, t) - eps).pow(2).mean().backward()
    return {"seconds_per_example": (time.perf_counter() - start) / len(train)}


def _genprov(
    model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float, per_example: str = "auto"
) -> dict[str, Any]:
    attributor = _attributor(model, k, damping, per_example=per_example)
    attributor.featurize(train[:2], torch.arange(2))  # warm the gradient path (not timed)
    start = time.perf_counter()
    attributor.fit(train, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "seconds_per_example": seconds / len(train),
        "scores": attributor.scores(queries).double().numpy(),
        "mode": attributor.per_example_mode,
    }


def _exact(model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float) -> dict[str, Any]:
    attributor = _attributor(model, k, damping, projector="identity")
    attributor.fit(train, show_progress=False)
    return {"scores": attributor.scores_from_features(attributor.featurize_queries(queries).double())}


def _loop(model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float) -> dict[str, Any]:
    """One backward per example, then the same sjlt projection of its gradients (the brute-force reference)."""
    attributor = _attributor(model, k, damping)
    projector = attributor.projector
    noise, query_noise = _noise(model, train, queries)
    params = dict(model.named_parameters())

    def features(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(len(x)):
            model.zero_grad()
            _example_loss(model, params, x[i], eps[i]).backward()
            rows.append(projector.project({n: p.grad.unsqueeze(0) for n, p in params.items()}))
        return torch.cat(rows)

    start = time.perf_counter()
    phi = features(train, noise)
    seconds = time.perf_counter() - start
    attributor.fit_features(phi)
    return {
        "seconds_per_example": seconds / len(train),
        "scores": attributor.scores_from_features(features(queries, query_noise)),
    }


def _traker(model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float) -> dict[str, Any]:

    from trak.modelout_functions import AbstractModelOutput

    class DiffusionLoss(AbstractModelOutput):
        def __init__(self) -> None:
            pass

        def get_output(self, model: Any, weights: Any, buffers: Any, x0: Any, noise: Any) -> Any:  # type: ignore[override]
            return _example_loss(model, {**weights, **buffers}, x0, noise)

        def get_out_to_loss_grad(self, model: Any, weights: Any, buffers: Any, batch: Any) -> Any:  # type: ignore[override]
            return torch.ones(batch[0].shape[0], 1)

    noise, query_noise = _noise(model, train, queries)
    seconds, scores = traker_run(
        model,
        DiffusionLoss(),
        [(train[s : s + BATCH], noise[s : s + BATCH]) for s in range(0, len(train), BATCH)],
        [(queries[s : s + BATCH], query_noise[s : s + BATCH]) for s in range(0, len(queries), BATCH)],
        k=k,
        damping=damping,
    )
    return {"seconds_per_example": seconds / len(train), "scores": scores}


def _dattri(model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float) -> dict[str, Any]:
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    n_params = sum(p.numel() for p in model.parameters())
    noise, query_noise = _noise(model, train, queries)

    def loss(params: Any, data: Any) -> torch.Tensor:
        return _example_loss(model, params, data[0], data[1])

    def never_right(params: Any, data: Any) -> torch.Tensor:  # Q = 1 - p = 1: no Q weighting, as in D-TRAK
        return (data[0] * 0).sum()

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = TRAKAttributor(
        task=task,
        correct_probability_func=never_right,
        projector_kwargs={"proj_dim": k, "device": "cpu", "proj_seed": 0},
        device="cpu",
        regularization=damping / n_params,
    )
    start = time.perf_counter()
    attributor.cache(DataLoader(TensorDataset(train, noise), batch_size=BATCH, shuffle=False))
    seconds = time.perf_counter() - start
    scores = attributor.attribute(DataLoader(TensorDataset(queries, query_noise), batch_size=BATCH, shuffle=False))
    return {"seconds_per_example": seconds / len(train), "scores": np.asarray(scores, dtype=np.float64).T}


_METHODS = {
    "floor": _floor,
    "genprov": _genprov,
    "genprov hooks": functools.partial(_genprov, per_example="hooks"),
    "genprov loop": functools.partial(_genprov, per_example="loop"),
    "exact": _exact,
    "autograd loop": _loop,
    "traker": _traker,
    "dattri": _dattri,
}


def _measure(method: str, n_train: int, n_queries: int, k: int, damping: float) -> dict[str, Any]:
    """Run one method in this (spawned) process: time, peak RSS above set-up, scores."""
    model, train, queries = _setup(n_train, n_queries)
    if method == "floor":
        noise, _ = _noise(model, train, queries)
        args: tuple[Any, ...] = (model, train, noise)
    else:
        args = (model, train, queries, k, damping)
    _warm_up(model, train)
    base = reset_peak()
    try:
        out = _METHODS[method](*args)
    except ImportError as err:
        return {"error": f"not installed ({err.name})"}
    out["peak_mb"] = max(0.0, status_mb("VmHWM") - base)
    return out


def _damping(n_train: int, n_queries: int) -> float:
    """A shared absolute lambda: 0.1 x the mean squared norm of the exact gradients (JL keeps it for every k)."""
    model, train, _ = _setup(n_train, n_queries)
    exact = _attributor(model, 8, 1.0, projector="identity")
    grads = exact.featurize(train[:BATCH], torch.arange(BATCH))
    return 0.1 * float(grads.double().pow(2).sum(1).mean())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def run(quick: bool) -> str:
    """Benchmark and return the Markdown section (see the module docstring)."""
    n_train, n_queries, k = (32, 4, 1024) if quick else (64, 8, 4096)
    damping = _damping(n_train, n_queries)
    exact = in_child(_measure, "exact", n_train, n_queries, k, damping)["scores"]
    timed = [m for m in _METHODS if m != "exact"]
    trials, results, times = spawned_trials(_measure, timed, n_train, n_queries, k, damping)
    floor, genprov_time = times["floor"], times["genprov"]
    lines = [
        "### TRAK featurization on CPU (bench_trak)",
        "",
        f"DDPM `base` with 2 layers per block (1.0M parameters), 16x16 digits, n_train={n_train}, "
        f"{n_queries} queries, K={N_TIMESTEPS} timesteps, k={k}, batch {BATCH}, 1 thread, lambda = 0.1 x mean "
        "squared gradient norm. Agreement: Spearman of all (query, train) scores with the exact scores "
        "(no projection). " + trials.note(),
        "",
        "| method | s / example, median [min-max] | x genprov time | x floor | peak MB above set-up (median) "
        "| Spearman vs exact |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in timed:
        r = results[method]
        if "error" in r:
            lines.append(f"| {method} | {r['error']} | | | | |")
            continue
        per = times[method]
        peak = float(np.median([o["peak_mb"] for o in trials.outputs[method]]))
        agree = f"{_spearman(r['scores'], exact):.3f}" if "scores" in r else "n/a"
        label = f"{method} ({r['mode']})" if method == "genprov" and "mode" in r else method
        lines.append(
            f"| {label} | {per.cell('.3f')} | {per.ratio(genprov_time):.2f} | {per.ratio(floor):.2f} | {peak:.0f} "
            f"| {agree} |"
        )
    for peer in ("traker", "dattri"):
        r = results[peer]
        if "scores" in r:
            lines.append("")
            lines.append(
                f"Spearman genprov vs {peer}: {_spearman(results['genprov']['scores'], r['scores']):.3f}; "
                f"{peer} / genprov featurization time (ratio of medians): {times[peer].ratio(genprov_time):.1f}x."
            )
    n_values = (n_train, 4 * n_train)
    lines += [
        "",
        f"Memory flatness: genprov's featurization peak at n = {n_values[0]} and {n_values[1]} (k={k}); "
        "features are held in memory here (a store writes them shard by shard).",
        "",
        memory_flatness(n_values, k),
    ]
    return "\n".join(lines)


def memory_flatness(n_values: tuple[int, ...] = (64, 256), k: int = 4096) -> str:
    """genprov featurization peak RSS for several n (in memory; features are n x k float32 on top)."""
    damping = 1.0
    rows = []
    for n in n_values:
        r = in_child(_measure, "genprov", n, 2, k, damping)
        rows.append(f"| {n} | {r['peak_mb']:.0f} | {n * k * 4 / 2**20:.1f} | {r['seconds_per_example']:.3f} |")
    header = [
        "| n_train | peak MB above set-up | of which features (n x k float32) | s / example (one run) |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", action="store_true", help="only the memory-flatness table")
    cli = parser.parse_args()
    print(memory_flatness() if cli.memory else run(cli.quick))
