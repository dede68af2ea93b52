"""TRAK featurization on Ray: throughput with 1 and 2 workers against the in-process driver, and Ray's overhead.

The same D-TRAK store (``DDPMConfig.preset("base")``, 16x16 digits, K=10 timesteps, k=2048, sjlt) is filled three
times with :func:`genprov.attribution.data.trak_shards.featurize_sharded`: in this process, then on a local Ray of
2 CPUs with 1 and with 2 workers (1 torch thread each, as the driver). Timings include everything a user waits
for: Ray's start (once, reported apart), workers importing torch and reopening the checkpoint, the shards and the
driver's writes. Each of the three runs is made once as a warm-up (its time is reported as the cold run: Ray's
workers start and import there), then three times interleaved (:mod:`benchmarks.timing`), each into a fresh store;
the table gives the median with the range, speed-ups as ratios of medians, and the load flag. The per-shard
overhead is Ray's median wall time with 1 worker minus the in-process median, divided by the number of shards.
The features of every run are compared with the first in-process ones (they must be bit-identical).
Goal: >= 1.8x the in-process throughput with 2 workers on a 2-core machine.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import interleaved


def _fill(checkpoint: Path, train: torch.Tensor, store: Path, backend: object, shard_size: int) -> dict[str, Any]:
    """Fill ``store`` through ``backend``: the seconds of ``featurize_sharded`` and the features."""
    from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
    from genprov.attribution.data.trak_shards import featurize_sharded
    from genprov.models.checkpoints import load_checkpoint

    config = TRAKConfig(output_function="squared-l2-norm", n_timesteps=10, proj_dim=2048, shard_size=shard_size)
    attributor = TRAKAttributor(load_checkpoint(checkpoint).model, config=config)
    start = time.perf_counter()
    featurize_sharded(attributor, train, store, backend, show_progress=False)  # type: ignore[arg-type]
    return {"seconds": time.perf_counter() - start, "features": np.asarray(attributor.train_features_)}


def run(quick: bool) -> str:
    """Markdown section: examples/s in process and with 1 and 2 Ray workers, speed-ups, overhead per shard."""
    import ray

    from genprov.data import load_dataset
    from genprov.models.checkpoints import save_checkpoint
    from genprov.models.diffusion import DDPM, DDPMConfig
    from genprov.storage.shards import InProcessBackend, RayBackend

    torch.set_num_threads(1)
    n_train, shard_size = (64, 16) if quick else (512, 32)
    train = load_dataset("digits", split="train", resize=16, n=n_train, seed=0).images
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = DDPM(DDPMConfig.preset("base", image_size=16)).eval()
        checkpoint = save_checkpoint(root / "ddpm", "ddpm", {"ddpm": model}, model.config)
        folders = (root / f"store{i}" for i in itertools.count())  # a fresh store per run: nothing resumed
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            backends = {
                "in process": InProcessBackend(),
                "Ray, 1 worker(s)": RayBackend(workers=1),
                "Ray, 2 worker(s)": RayBackend(workers=2),
            }
            trials = interleaved(
                {
                    name: lambda _, backend=backend: _fill(checkpoint, train, next(folders), backend, shard_size)
                    for name, backend in backends.items()
                }
            )
        finally:
            ray.shutdown()
    reference = trials.outputs["in process"][0]["features"]
    times = {name: trials.timing(name, key="seconds") for name in backends}
    n_shards = -(-n_train // shard_size)
    lines = [
        "### TRAK featurization on Ray (bench_ray)",
        "",
        f"{n_train} digits 16x16, DDPM base, K=10, k=2048, {n_shards} shards of {shard_size}; Ray start "
        f"{ray_start:.1f} s (not included below). {trials.note()}",
        "",
        "| run | cold run (s) | seconds, median [min-max] | examples/s | speed-up vs in process | features identical |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, took in times.items():
        same = all(np.array_equal(out["features"], reference) for out in trials.outputs[name])
        lines.append(
            f"| {name} | {trials.warm_up_seconds[name]:.1f} | {took.cell('.1f')} | {n_train / took.median:.1f} "
            f"| {times['in process'].ratio(took):.2f}x | {same} |"
        )
    overhead = (times["Ray, 1 worker(s)"].median - times["in process"].median) / n_shards
    lines += ["", f"Ray overhead per shard (1 worker vs in process, medians): {overhead * 1000:.0f} ms.", ""]
    return "\n".join(lines)
