"""Featurization throughput: the ``kronecker`` projector (one batched pass with hooks, LoGra) vs today's path and vs
dattri's LoGra; the peak memory per batch; and the LDS of ``kronecker`` vs ``sjlt`` at the same k.

Models, data and outputs are those of ``bench_trak`` (the ~1M-parameter DDPM, 16x16 digits, TRAK's loss over
K=10 timesteps) and ``bench_trak_t2i`` (the default text-to-image pipeline with a rank-4 LoRA, D-TRAK's
``squared-l2-norm``; LoRA-only and all U-Net parameters). Rows:

- **sjlt (today)**: ``TRAKAttributor`` with the default ``sjlt`` projector and ``per_example="auto"``.
- **kronecker**: ``projector="kronecker"`` with the same ``proj_dim`` (its feature dimension is
  ``n_layers * ceil(sqrt(k / n_layers))^2 >= k``; its features cover the Linear / Conv2d weights and biases,
  the covered fraction is in the table).
- **dattri LoGra** (DDPM only): dattri 0.3.0's ``dattri.algorithm.logra.LoGraAttributor`` (a wrapper of
  ``block_projected_if.BlockProjectedIFAttributor``), its ``cache`` timed: the same model, examples, K timesteps
  and noise (genprov's per-example noise, ``bench_trak._noise``), the same total k by genprov's rule. What differs,
  as dattri's API imposes:

  * it hooks ``nn.Linear`` layers only (its ``HookManager`` skips every other type): 38 of the DDPM's 73
    Linear / Conv2d layers, a fifth of the parameters (the coverage column), so its per-layer factors
    are larger for the same total k: ``proj_dim`` (its per-layer dimension, a perfect square) is
    ``ceil(sqrt(k / 38))^2``;
  * its per-sample gradient is per row of a layer's call, so each of its samples is one (example, timestep)
    row (``x_t``, ``t``, ``eps``, batches of 16 examples x K rows, its loss the mean over rows of the row's
    squared error) and an example's features are the mean of its K rows' (the per-example gradient of TRAK's
    loss, which averages over the K timesteps);
  * its factors are Gaussian (``proj_type="normal"``, seeded per module); ``hessian="Identity"``, so ``cache``
    computes the projected gradients only (its ``eFIM`` would fit per-layer Fishers over rows, not examples);
    its compressors (two set-up forward passes) are built before the timed ``cache``, as genprov's factors
    are drawn in its warm-up; its compression is ``torch.compile``-d (inductor, needs a C++ compiler), compiled
    in a warm-up ``cache`` of one batch by another instance in the same process;
  * its scores: dattri's query features (``_compute_test_gradients``, the path of its ``attribute``) scored
    with genprov's TRAK kernel and the same lambda, so the agreement column compares features, not
    estimators. Its scores rank unlike the all-parameter exact scores because it sees a fifth of the
    parameters; a line under the table compares it with the exact scores of the parameters it covers (the
    Linear layers' weights and biases, identity projection), beside genprov's kronecker restricted to the
    same layers (``include`` = those parameters).

  When dattri is missing or cannot run here its row says "not run: REASON".

Each timed run is a spawned single-threaded process (set-up, imports and a warm-up batch are not timed); the
methods run interleaved (A B C A B C ...) ``repeats`` times (:mod:`benchmarks.timing`) and the table gives the
median seconds per example, the range, the ratio of medians, and the median peak RSS above set-up (one
featurization of ``BATCH`` examples at a time: the peak per batch). The 1-minute load average is read before
and after; a change above 0.5 flags the table. Agreement (DDPM rows): the Spearman correlation of each
method's (query x train) TRAK scores with the exact scores (identity projection, all parameters, float64
kernel; ``bench_trak``'s), and with the kronecker row's, lambda = 0.1 x the mean squared exact gradient norm.

Peak memory per batch of the kronecker path: the DDPM featurized into a :class:`~genprov.storage.FeatureStore`
(written shard by shard) at n and 4n examples: the peak stays flat in n.

LDS: :mod:`benchmarks.projector_lds` (a digits LDS benchmark built by ``build_lds_benchmark``, TRAK and D-TRAK
with each projector at the same k, lambda chosen on validation queries as ``genprov trak lds`` does).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import statistics
import tempfile
import time
import types
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from benchmarks.memory import reset_peak, status_mb
from benchmarks.timing import MIN_REPEATS, in_child, interleaved

BATCH = 16
#: The dattri LoGra row's projector name.
DATTRI = "dattri LoGra"
#: (model, selection, projector) of each row.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("ddpm", "all", "sjlt"),
    ("ddpm", "all", "kronecker"),
    ("ddpm", "linear", DATTRI),
    ("t2i", "lora", "sjlt"),
    ("t2i", "lora", "kronecker"),
    ("t2i", "all", "sjlt"),
    ("t2i", "all", "kronecker"),
)


def _sizes(quick: bool) -> tuple[int, int, int]:
    """``(n_train, n_queries, k)`` of the throughput table."""
    return (16, 4, 1024) if quick else (64, 8, 4096)


def _name(row: tuple[str, str, str]) -> str:
    return " ".join(row)


# ------------------------------------------------------------------------------------ dattri LoGra


class _RowLoss(nn.Module):
    """The DDPM as dattri's task model: ``forward(x_t, t, eps)`` returns an object whose ``loss`` is the mean over
    the rows of each row's squared error (what dattri's ``_compute_test_gradients`` reads of a dict batch)."""

    def __init__(self, ddpm: nn.Module) -> None:
        super().__init__()
        self.ddpm = ddpm

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> types.SimpleNamespace:
        return types.SimpleNamespace(loss=(self.ddpm(x_t, t) - eps).pow(2).flatten(1).mean(1).mean())


class _Rows(torch.utils.data.Dataset):
    """One (example, timestep) row per sample, as dicts ``{"x_t", "t", "eps"}`` (batched by the default collate)."""

    def __init__(self, model: Any, x0: torch.Tensor, noise: torch.Tensor, n_timesteps: int) -> None:
        t = torch.arange(0, 1000, 1000 // n_timesteps).repeat(len(x0))
        self.eps = noise.reshape(-1, *x0.shape[1:])
        self.t = t
        self.x_t = model.add_noise(x0.repeat_interleave(n_timesteps, 0), self.eps, t)

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x_t": self.x_t[i], "t": self.t[i], "eps": self.eps[i]}


def _dattri_logra(model: Any, train: torch.Tensor, queries: torch.Tensor, k: int, damping: float) -> dict[str, Any]:
    """dattri's LoGra ``cache`` of ``train`` (timed), its query features, scored with genprov's TRAK kernel."""
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    from benchmarks.bench_trak import N_TIMESTEPS, _attributor, _noise

    wrapper = _RowLoss(model)
    layers = [n for n, m in wrapper.named_modules() if isinstance(m, nn.Linear)]
    covered = sum(p.numel() for n, m in wrapper.named_modules() if n in layers for p in m.parameters(recurse=False))
    per_layer = math.ceil(math.sqrt(k / len(layers))) ** 2
    noise, query_noise = _noise(model, train, queries)
    rows = BATCH * N_TIMESTEPS

    def loss(m: nn.Module, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
        return m(**{key: v.to(device) for key, v in batch.items()}).loss

    def attributor(folder: str) -> Any:
        task = AttributionTask(loss_func=loss, model=wrapper, checkpoints=wrapper.state_dict())
        return LoGraAttributor(
            task=task, layer_names=layers, hessian="Identity", device="cpu", proj_dim=per_layer, cache_dir=folder
        )

    def loader(x0: torch.Tensor, eps: torch.Tensor) -> Any:
        return DataLoader(_Rows(model, x0, eps, N_TIMESTEPS), batch_size=rows, shuffle=False)

    def per_example(features: torch.Tensor) -> torch.Tensor:  # (n K, d) rows -> (n, d): mean over the K rows
        return features.reshape(-1, N_TIMESTEPS, features.shape[1]).mean(1)

    # tqdm progress bars of every dattri step go to a buffer (its bars are created with the stderr of the moment)
    with (
        tempfile.TemporaryDirectory(prefix="genprov-bench-dattri-") as folder,
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warm = attributor(f"{folder}/warm-up")  # compiles dattri's compressors (torch.compile), not timed
        warm.cache(loader(train[:BATCH], noise[:BATCH]))
        logra = attributor(f"{folder}/timed")
        train_loader = loader(train, noise)
        logra._setup_compressors(train_loader)  # what cache() does first: two set-up forward passes, not timed
        base = reset_peak()
        start = time.perf_counter()
        logra.cache(train_loader)
        seconds = time.perf_counter() - start
        peak = max(0.0, status_mb("VmHWM") - base)
        n_batches = len(train_loader)
        phi = torch.cat([torch.cat(logra.offload_manager.retrieve_gradients(b), dim=1) for b in range(n_batches)])
        phi_q, _ = logra._compute_test_gradients(loader(queries, query_noise))
        feature_dim = int(logra.total_proj_dim)
    scorer = _attributor(model, k, damping)
    scorer.fit_features(per_example(phi).double())
    return {
        "seconds_per_example": seconds / len(train),
        "peak_mb": peak,
        "feature_dim": feature_dim,
        "coverage": covered / sum(p.numel() for p in model.parameters()),
        "scores": scorer.scores_from_features(per_example(phi_q).double()).numpy(),
    }


# ------------------------------------------------------------------------------------ one run


def _measure(
    model_name: str, selection: str, projector: str, n_train: int, n_queries: int, k: int, damping: float
) -> dict[str, Any]:
    """In a spawned process: featurize ``n_train`` examples after a warm-up batch; time, peak RSS and (DDPM) the
    scores of ``n_queries`` queries. A peer that is missing or fails returns ``{"error": "not run: REASON"}``."""
    torch.set_num_threads(1)
    if model_name == "ddpm":
        from benchmarks.bench_trak import _attributor, _setup, _warm_up

        model, train, queries = _setup(n_train, n_queries)
        _warm_up(model, train)
        if projector == DATTRI:
            try:
                return _dattri_logra(model, train, queries, k, damping)
            except ImportError as err:
                return {"error": f"not run: not installed ({err.name}; pip install --no-deps dattri)"}
            except Exception as err:  # a peer that cannot run here is reported, not fatal
                return {"error": f"not run: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        attributor = _attributor(model, k, damping, projector=projector)
        warm = train[:BATCH]
    else:
        from benchmarks.bench_trak_t2i import _attributor as t2i_attributor
        from benchmarks.bench_trak_t2i import _setup as setup_t2i

        pipe, train, _ = setup_t2i(n_train + BATCH, 1)
        attributor = t2i_attributor(pipe, k, 1.0, lora=selection == "lora", projector=projector)
        warm = train[n_train:]
    attributor.featurize(warm, list(range(n_train, n_train + BATCH)))  # warm-up, not timed
    base = reset_peak()
    start = time.perf_counter()
    phi = attributor.featurize(train[:n_train], list(range(n_train)))
    seconds = time.perf_counter() - start
    out = {
        "seconds_per_example": seconds / n_train,
        "peak_mb": max(0.0, status_mb("VmHWM") - base),
        "feature_dim": attributor.feature_dim,
        "coverage": attributor.parameter_coverage,
    }
    if model_name == "ddpm":
        attributor.fit_features(phi)
        out["scores"] = attributor.scores_from_features(attributor.featurize_queries(queries)).numpy()
    return out


def _linear_scores(n_train: int, n_queries: int, k: int, damping: float) -> dict[str, np.ndarray]:
    """In a spawned process: the DDPM's TRAK scores on its ``nn.Linear`` layers' parameters only (what dattri's
    LoGra covers): exact (identity projection) and with the kronecker projector."""
    from benchmarks.bench_trak import _attributor, _setup
    from genprov.attribution.data.trak import TRAKAttributor

    torch.set_num_threads(1)
    model, train, queries = _setup(n_train, n_queries)
    linear = tuple(
        f"{name}.{local}"
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        for local, p in (("weight", m.weight), ("bias", m.bias))
        if p is not None
    )
    out = {}
    for projector in ("identity", "kronecker"):
        config = _attributor(model, k, damping, projector=projector).config.replace(include=linear)
        attributor = TRAKAttributor(model, config=config)
        attributor.fit(train, show_progress=False)
        out[projector] = attributor.scores_from_features(attributor.featurize_queries(queries)).numpy()
    return out


def _run_row(row: tuple[str, str, str], sizes: tuple[int, int, int, float], _repetition: int) -> dict[str, Any]:
    """One timed run of ``row`` (a spawned process): what :func:`~benchmarks.timing.interleaved` calls."""
    return dict(in_child(_measure, *row, *sizes))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def throughput(quick: bool, *, repeats: int = MIN_REPEATS, rows: tuple[tuple[str, str, str], ...] = ROWS) -> str:
    """Benchmark ``rows`` interleaved ``repeats`` times and return the Markdown table with its agreement columns."""
    from benchmarks.bench_trak import _damping
    from benchmarks.bench_trak import _measure as trak_measure

    n_train, n_queries, k = _sizes(quick)
    ddpm = any(row[0] == "ddpm" for row in rows)
    damping = in_child(_damping, n_train, n_queries) if ddpm else 1.0
    exact = np.asarray(in_child(trak_measure, "exact", n_train, n_queries, k, damping)["scores"]) if ddpm else None
    sizes = (n_train, n_queries, k, damping)
    trials = interleaved(
        {_name(row): functools.partial(_run_row, row, sizes) for row in rows}, repeats=repeats, warm_up=False
    )
    kron = trials.last(_name(("ddpm", "all", "kronecker"))) if ("ddpm", "all", "kronecker") in rows else {}
    lines = [
        "### TRAK featurization: kronecker projector vs sjlt vs dattri LoGra (bench_trak_kronecker)",
        "",
        f"n_train={n_train}, {n_queries} queries (DDPM), k={k}, batch {BATCH}, 1 thread. Agreement: Spearman of all "
        "(query, train) TRAK scores with the exact scores (no projection, all parameters) and with the kronecker "
        f"row's, lambda = 0.1 x mean squared gradient norm. {trials.note()}",
        "",
        "| model | parameters | projector | s / example, median [min-max] | speed-up vs sjlt | peak MB per batch "
        "(median) | feature dim | coverage | Spearman vs exact | Spearman vs kronecker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        model_name, selection, projector = row
        last = trials.last(_name(row))
        if "error" in last:
            lines.append(f"| {model_name} | {selection} | {projector} | {last['error']} | | | | | | |")
            continue
        times = trials.timing(_name(row), key="seconds_per_example")
        baseline = (model_name, "all" if projector == DATTRI else selection, "sjlt")
        speed = (
            f"{trials.timing(_name(baseline), key='seconds_per_example').ratio(times):.2f}"
            if baseline in rows and "error" not in trials.last(_name(baseline))
            else "n/a"
        )
        runs = trials.outputs[_name(row)]
        agree = [
            f"{_spearman(last['scores'], ref):.3f}" if "scores" in last and ref is not None else "n/a"
            for ref in (exact, kron.get("scores"))
        ]
        lines.append(
            f"| {model_name} | {selection} | {projector} | {times.cell('.4f')} | {speed} "
            f"| {statistics.median(r['peak_mb'] for r in runs):.0f} | {last['feature_dim']} "
            f"| {last['coverage']:.3f} | {agree[0]} | {agree[1]} |"
        )
    dattri = ("ddpm", "linear", DATTRI)
    if dattri in rows and "scores" in trials.last(_name(dattri)):
        linear = in_child(_linear_scores, n_train, n_queries, k, damping)
        lines += [
            "",
            "On the parameters dattri's LoGra covers (the nn.Linear layers), Spearman with their exact scores: "
            f"dattri LoGra {_spearman(trials.last(_name(dattri))['scores'], linear['identity']):.3f}, genprov "
            f"kronecker on the same layers {_spearman(linear['kronecker'], linear['identity']):.3f}.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ peak memory per batch


def _store_peak(projector: str, n_train: int, k: int) -> dict[str, Any]:
    """In a spawned process: featurize ``n_train`` DDPM examples into a feature store; peak RSS above set-up."""
    from benchmarks.bench_trak import _attributor, _setup, _warm_up

    torch.set_num_threads(1)
    model, train, _ = _setup(n_train, 1)
    _warm_up(model, train)
    attributor = _attributor(model, k, 1.0, projector=projector)
    attributor.featurize(train[:BATCH], list(range(BATCH)))  # warm-up, not timed
    with tempfile.TemporaryDirectory(prefix="genprov-bench-store-") as folder:
        base = reset_peak()
        start = time.perf_counter()
        attributor.fit(train, store=f"{folder}/store", show_progress=False)
        seconds = time.perf_counter() - start
        peak = max(0.0, status_mb("VmHWM") - base)
    return {"peak_mb": peak, "seconds_per_example": seconds / n_train, "feature_dim": attributor.feature_dim}


def memory_per_batch(n_values: tuple[int, ...], k: int, projector: str = "kronecker") -> str:
    """Peak RSS of ``projector``'s featurization into a feature store at each n (one run each): flat in n."""
    lines = [
        f"Peak memory per batch of the {projector} path (DDPM, k={k}, batch {BATCH}, features written to a "
        "FeatureStore shard by shard; one run each, its seconds are not a timing result):",
        "",
        "| n_train | peak MB above set-up | features on disk (n x dim float32, MB) | s / example (one run) |",
        "| --- | --- | --- | --- |",
    ]
    for n in n_values:
        r = in_child(_store_peak, projector, n, k)
        lines.append(
            f"| {n} | {r['peak_mb']:.0f} | {n * r['feature_dim'] * 4 / 2**20:.1f} | {r['seconds_per_example']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(
    quick: bool,
    *,
    repeats: int = MIN_REPEATS,
    rows: tuple[tuple[str, str, str], ...] = ROWS,
    lds: bool = True,
    lds_workers: int = 1,
) -> str:
    """The Markdown section: the throughput table, the peak memory per batch in n and the LDS comparison."""
    from benchmarks.projector_lds import lds_section

    n_train, _, k = _sizes(quick)
    parts = [throughput(quick, repeats=repeats, rows=rows), memory_per_batch((n_train, 4 * n_train), k)]
    if lds:
        parts.append(lds_section(quick, workers=lds_workers))
    return "\n".join(parts)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--no-lds", action="store_true", help="skip the LDS comparison")
    parser.add_argument("--lds-workers", type=int, default=1, help="processes training the LDS benchmark's models")
    cli = parser.parse_args()
    print(run(cli.quick, repeats=cli.repeats, lds=not cli.no_lds, lds_workers=cli.lds_workers))
