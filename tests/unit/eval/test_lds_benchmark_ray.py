"""An LDS benchmark's subset models as Ray tasks on a local 2-CPU cluster: the losses of one process, bit for bit,
with 1 or 2 workers, a killed worker retried, and the models kept by the driver.

Ray is part of the dev extra (``make test`` installs it), so these tests run rather than skip.
"""

# ruff: noqa: F811  (the fixtures imported from lds_fixtures are requested by name)
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lds_fixtures import CLI_ARGS, checkpoint, images, plan, queries, reference  # noqa: F401
from typer.testing import CliRunner

from genprov.cli.trak import app
from genprov.eval import lds_benchmark
from genprov.eval.lds import LDSBenchmark, measure_losses
from genprov.eval.lds_benchmark import BENCHMARK_FILE, SubsetModelTask, build_lds_benchmark
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM
from genprov.storage.shards import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def test_one_and_two_workers_give_the_losses_of_one_process(plan, reference, tmp_path) -> None:
    for workers in (1, 2):
        bench = build_lds_benchmark(plan, tmp_path / f"w{workers}", RayBackend(workers=workers))
        np.testing.assert_array_equal(bench.losses, reference)


def test_a_worker_killed_mid_model_is_retried_and_changes_nothing(plan, reference, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "killed-once"

    class KilledOnce(SubsetModelTask):
        """Kills its worker process in the first attempt of model 3."""

        def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
            if start == 3 and not marker.exists():
                marker.touch()
                os._exit(1)
            return SubsetModelTask.__call__(self, start, stop)

    monkeypatch.setattr(lds_benchmark, "SubsetModelTask", KilledOnce)
    bench = build_lds_benchmark(plan, tmp_path / "losses", RayBackend(workers=2, max_retries=2))
    assert marker.exists()  # the worker did die
    np.testing.assert_array_equal(bench.losses, reference)


def test_cli_on_ray_keeps_the_models_and_writes_the_in_process_benchmark(checkpoint, plan, reference, tmp_path) -> None:
    out = tmp_path / "bench"
    args = ["lds-benchmark", "--model", str(checkpoint), *CLI_ARGS, "--out", str(out), "--keep-models"]
    result = CliRunner().invoke(app, [*args, "--backend", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "ray"
    bench = LDSBenchmark.load(out / BENCHMARK_FILE)
    np.testing.assert_array_equal(bench.losses, reference)
    kept = sorted(p.name for p in (out / "models").iterdir())
    assert kept == [plan.name(row) for row in range(plan.n_models)]
    model = load_checkpoint(out / "models" / plan.name(4)).model
    assert isinstance(model, DDPM)
    np.testing.assert_array_equal(measure_losses(model, plan.draws), reference[2, 0])
