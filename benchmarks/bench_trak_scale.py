"""TRAK scoring at scale: block-wise top-k over a synthetic feature store, memory flat in n_train.

Data: a :class:`~genprov.storage.FeatureStore` of ``n`` seeded standard-normal float32 features of k = 2048
dimensions (quick: k = 256), written shard by shard on disk, and ``n_q`` seeded query features. Full size:
n = 1,000,000 (and 250,000 to show flatness), 10,000 queries, top-100 positive and top-100 negative per query
(quick: n = 25,000 and 100,000, 500 queries). Each n runs in its own spawned process, so its peaks are its own;
within it the block-wise top-k and the full matrix are timed by :mod:`benchmarks.timing` (warm-up, 3 interleaved
runs, median [min-max], load flag over the table).

Measured per n:

- **kernel**: ``fit_features`` on the store (the k x k kernel ``Phi^T Phi`` accumulated block-wise, its
  Cholesky factor), then again on a reopened attributor, which reads both from the store's cache.
- **block-wise top-k**: ``TRAKAttributor.top_k_scores(phi_q, 100, negative=100)`` (training rows streamed
  16,384 at a time, queries 1,024 at a time): time, and peak memory above the set-up, as the numpy
  allocation peak (``tracemalloc``, exact for numpy arrays) and the sampled peak anonymous RSS (``RssAnon``
  every 20 ms: it includes BLAS buffers; the memmap's file pages are page cache, reclaimable, and left out).
- **full matrix** (the previous path, ``scores_from_features`` + ``top_k``): run where its (n_q, n) float64
  matrix takes under 2 GB, else its requirement computed.
- **traker** ``finalize_scores`` (MadryLab/trak, ``trak/traker.py``): it accumulates all scores in one CPU
  tensor ``ch.zeros(n_train, n_targets)`` float32, loads the features as one tensor
  (``ch.as_tensor(current_store["features"])``, a copy on a GPU) and writes ``_scores_on_cpu.numpy() / n_models *
  out_to_loss`` (another n x n_q temporary): at least 2 x n x n_q x 4 bytes (+ n x k x 4 on a GPU), computed.

Usage: ``python -m benchmarks.bench_trak_scale [--quick]`` (or via ``python -m benchmarks.run --only trak_scale``).
Needs n x k x 4 bytes of free disk for the store (8 GB at full size) in ``$TMPDIR``.
"""

from __future__ import annotations

import tempfile
import threading
import time
import tracemalloc
from typing import Any

import numpy as np

from benchmarks.memory import status_mb
from benchmarks.timing import in_child, interleaved, load_note

TOP = 100
SHARD = 65_536
FULL_MATRIX_LIMIT = 2 * 2**30  # bytes: the full-matrix path runs only below this
GB = 2**30


class _AnonPeak:
    """Sample ``RssAnon`` every 20 ms in a thread; ``peak`` is the highest reading (MiB)."""

    def __init__(self) -> None:
        self.peak = status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def __enter__(self) -> _AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mb("RssAnon"))


def _measure(fn: Any) -> tuple[Any, float, float, float]:
    """``(result, seconds, numpy peak MiB, RssAnon peak MiB)`` of ``fn()`` above the memory before it."""
    base_anon = status_mb("RssAnon")
    tracemalloc.start()
    try:
        with _AnonPeak() as anon:
            start = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - start
        numpy_peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result, seconds, numpy_peak, anon.peak - base_anon


def _case(n: int, k: int, n_q: int) -> dict[str, Any]:
    import torch

    from genprov.attribution.data.base import top_k
    from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
    from genprov.storage import FeatureStore
    from genprov.utils.seeding import numpy_rng

    torch.set_num_threads(1)
    out: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="genprov-bench-trak-scale-") as folder:
        start = time.perf_counter()
        fs = FeatureStore.create(
            folder, n_rows=n, arrays={"features": k}, spec={"bench": "trak-scale"}, shard_size=SHARD
        )
        for shard in range(fs.n_shards):
            lo, hi = fs.shard_bounds(shard)
            rows = numpy_rng(0, "bench-trak-scale", shard).standard_normal((hi - lo, k), dtype=np.float32)
            fs.write_shard(shard, {"features": rows})
        out["store_s"] = time.perf_counter() - start
        phi_q = numpy_rng(1, "bench-trak-scale-queries").standard_normal((n_q, k), dtype=np.float32)

        def reopen(write_cache: bool = False) -> TRAKAttributor:
            attributor = TRAKAttributor(torch.nn.Linear(1, 1), config=TRAKConfig(relative_damping=1.0))
            attributor.store_ = FeatureStore.open(folder)
            return attributor.fit_features(attributor.store_.read("features"), write_cache=write_cache)

        start = time.perf_counter()
        reopen(write_cache=True)  # as fit does: the first fit caches the kernel and its factor in the store
        out["kernel_s"] = time.perf_counter() - start
        start = time.perf_counter()
        attributor = reopen()
        out["kernel_cached_s"] = time.perf_counter() - start
        methods = {"topk": lambda _: _measure(lambda: attributor.top_k_scores(phi_q, TOP, negative=TOP))}
        if n_q * n * 8 < FULL_MATRIX_LIMIT:
            methods["full"] = lambda _: _measure(lambda: top_k(attributor.scores_from_features(phi_q), TOP))
        trials = interleaved(methods)
    out["load"] = (trials.load_before, trials.load_after)
    for name in methods:  # time: median [min-max] of the runs; memory: the largest peak of the runs
        out[f"{name}_s"] = trials.timing(name, key=1)
        out[f"{name}_numpy_mb"] = max(run[2] for run in trials.outputs[name])
        out[f"{name}_anon_mb"] = max(run[3] for run in trials.outputs[name])
    if "full" in methods:
        out["agree"] = bool(np.array_equal(trials.last("full")[0][0].numpy(), trials.last("topk")[0].indices))
    return out


def run(quick: bool) -> str:
    """Benchmark and return the Markdown section (see the module docstring)."""
    k, n_q, sizes = (256, 500, (25_000, 100_000)) if quick else (2048, 10_000, (250_000, 1_000_000))
    results = [in_child(_case, n, k, n_q) for n in sizes]
    lines = [
        "### TRAK scoring at scale: block-wise top-k (bench_trak_scale)",
        "",
        f"Synthetic store, k = {k}, {n_q} queries, top-{TOP} positive and top-{TOP} negative per query, 1 torch "
        "thread, float64 scoring; training rows streamed 16,384 at a time, queries 1,024 at a time. Memory is the "
        "peak above the set-up: numpy arrays (tracemalloc) / anonymous RSS (sampled; memmap page cache excluded).",
        "",
        "| n_train | store write s | kernel s (first / cached) | top-k s | top-k peak MB (numpy / RssAnon) | "
        "full matrix: s, peak MB | traker finalize_scores needs (computed) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        n = r["n"]
        if "full_s" in r:
            full = (
                f"{r['full_s'].cell('.1f')} s, {r['full_numpy_mb']:.0f} / {r['full_anon_mb']:.0f} "
                f"(same top-k: {r['agree']})"
            )
        else:
            full = f"not run: needs {n_q * n * 8 / GB:.1f} GB for the float64 matrix"
        traker = f"{(2 * n * n_q * 4) / GB:.1f} GB (+ {n * k * 4 / GB:.1f} GB features on a GPU)"
        lines.append(
            f"| {n:,} | {r['store_s']:.1f} | {r['kernel_s']:.1f} / {r['kernel_cached_s']:.1f} | {r['topk_s'].cell('.1f')} | "
            f"{r['topk_numpy_mb']:.0f} / {r['topk_anon_mb']:.0f} | {full} | {traker} |"
        )
    ratio = results[-1]["topk_numpy_mb"] / max(results[0]["topk_numpy_mb"], 1e-9)
    lines += [
        "",
        f"Peak (numpy) at n = {sizes[-1]:,} over n = {sizes[0]:,}: {ratio:.2f}x for {sizes[-1] / sizes[0]:.0f}x the "
        "training set (goal: flat, under 2 GB). Top-k and full matrix: one warm-up each, then 3 interleaved runs "
        "(median [min-max] seconds; memory: the largest peak of the runs). "
        + load_note(results[0]["load"][0], results[-1]["load"][1]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
