"""Featurization throughput: the ``kronecker`` projector (one batched pass with hooks, LoGra) vs today's path.

Models, data and outputs are those of ``bench_trak`` (the ~1M-parameter DDPM, 16x16 digits, TRAK's loss over
K=10 timesteps) and ``bench_trak_t2i`` (the default text-to-image pipeline with a rank-4 LoRA, D-TRAK's
``squared-l2-norm``; LoRA-only and all U-Net parameters). Rows:

- **sjlt (today)**: ``TRAKAttributor`` with the default ``sjlt`` projector and ``per_example="auto"``.
- **kronecker**: ``projector="kronecker"`` with the same ``proj_dim`` (its feature dimension is
  ``n_layers * ceil(sqrt(k / n_layers))^2 >= k``; its features cover the Linear / Conv2d weights and biases,
  the covered fraction is in the table).

Each timed run is a spawned single-threaded process (set-up, imports and a warm-up batch are not timed); the
methods run interleaved (A B A B ...) ``repeats`` times (:mod:`benchmarks.timing`) and the table gives the median
seconds per example, the range, the ratio of medians, and the median peak RSS above set-up (one featurization
of ``BATCH`` examples at a time: the peak per batch). The 1-minute load average is read before and after; a
change above 0.5 flags the table.

The LDS comparison at the same k is ``genprov reproduce dtrak`` with ``--set 'study=[{"projector": "kronecker"}]'``
(it reuses the trained models of an earlier run in the same folder).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.memory import reset_peak, status_mb
from benchmarks.timing import MIN_REPEATS, in_child, interleaved

BATCH = 16
#: (model, selection, projector) of each row.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("ddpm", "all", "sjlt"),
    ("ddpm", "all", "kronecker"),
    ("t2i", "lora", "sjlt"),
    ("t2i", "lora", "kronecker"),
    ("t2i", "all", "sjlt"),
    ("t2i", "all", "kronecker"),
)


def _measure(model_name: str, selection: str, projector: str, n_train: int, k: int) -> dict[str, Any]:
    """In a spawned process: featurize ``n_train`` examples after a warm-up batch; time and peak RSS."""
    torch.set_num_threads(1)
    if model_name == "ddpm":
        from benchmarks.bench_trak import N_TIMESTEPS, _setup, _warm_up
        from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig

        model, train, _ = _setup(n_train + BATCH, 1)
        _warm_up(model, train)
        config = TRAKConfig(n_timesteps=N_TIMESTEPS, projector=projector, proj_dim=k, batch_size=BATCH, seed=0)
        attributor = TRAKAttributor(model, config=config)
    else:
        from benchmarks.bench_trak_t2i import _attributor
        from benchmarks.bench_trak_t2i import _setup as setup_t2i

        pipe, train, _ = setup_t2i(n_train + BATCH, 1)
        attributor = _attributor(pipe, k, 1.0, lora=selection == "lora", projector=projector)
    attributor.featurize(train[n_train:], list(range(n_train, n_train + BATCH)))  # warm-up, not timed
    base = reset_peak()
    start = time.perf_counter()
    attributor.featurize(train[:n_train], list(range(n_train)))
    seconds = time.perf_counter() - start
    return {
        "seconds_per_example": seconds / n_train,
        "peak_mb": max(0.0, status_mb("VmHWM") - base),
        "feature_dim": attributor.feature_dim,
        "coverage": attributor.parameter_coverage,
    }


def run(quick: bool, *, repeats: int = MIN_REPEATS, rows: tuple[tuple[str, str, str], ...] = ROWS) -> str:
    """Benchmark ``rows`` interleaved ``repeats`` times and return the Markdown section."""
    n_train, k = (16, 1024) if quick else (64, 4096)
    trials = interleaved(
        {" ".join(row): lambda _, row=row: in_child(_measure, *row, n_train, k) for row in rows},
        repeats=repeats,
        warm_up=False,
    )
    lines = [
        "### TRAK featurization: kronecker projector vs sjlt (bench_trak_kronecker)",
        "",
        f"n_train={n_train}, k={k}, batch {BATCH}, 1 thread. {trials.note()}",
        "",
        "| model | parameters | projector | s / example, median [min-max] | speed-up vs sjlt | peak MB per batch "
        "(median) | feature dim | coverage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        model_name, selection, projector = row
        times = trials.timing(" ".join(row), key="seconds_per_example")
        baseline = (model_name, selection, "sjlt")
        speed = (
            f"{trials.timing(' '.join(baseline), key='seconds_per_example').ratio(times):.2f}"
            if baseline in rows
            else "n/a"
        )
        runs = trials.outputs[" ".join(row)]
        lines.append(
            f"| {model_name} | {selection} | {projector} | {times.cell('.4f')} | {speed} "
            f"| {statistics.median(r['peak_mb'] for r in runs):.0f} | {runs[-1]['feature_dim']} "
            f"| {runs[-1]['coverage']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    cli = parser.parse_args()
    print(run(cli.quick, repeats=cli.repeats))
