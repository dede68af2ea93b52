"""Building an LDS benchmark (``genprov.eval.lds_benchmark``, ``genprov trak lds-benchmark``): the subset models
trained and measured one task each equal an explicit loop over the protocol, resume after an interruption, keep
their checkpoints, refuse a second driver, feed ``genprov trak lds``, and give ``reproduce dtrak`` the benchmark
its earlier job code gave."""

# ruff: noqa: F811  (the fixtures imported from lds_fixtures are requested by name)
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from lds_fixtures import CLI_ARGS, CONFIG, MODEL, RECIPE, checkpoint, images, plan, queries, reference  # noqa: F401
from typer.testing import CliRunner

from genprov.cli.trak import app
from genprov.data import random_subsets
from genprov.eval import lds_benchmark
from genprov.eval.lds import EvalDraws, LDSBenchmark, measure_losses
from genprov.eval.lds_benchmark import BENCHMARK_FILE, LDSBenchmarkConfig, LDSPlan, build_lds_benchmark
from genprov.exceptions import ConfigError, StoreMismatchError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM
from genprov.models.train_config import TrainConfig
from genprov.models.training import train_ddpm
from genprov.storage import FeatureStore
from genprov.storage.shards import DRIVER_LOCK_FILE, Shard, ShardTask, StoreLockedError, driver_lock
from genprov.utils.seeding import derive_seed


@pytest.fixture(scope="module")
def built(plan: LDSPlan, tmp_path_factory: pytest.TempPathFactory) -> tuple[LDSBenchmark, Path]:
    """The benchmark built in this process, with its models kept; and its folder."""
    folder = tmp_path_factory.mktemp("built")
    return build_lds_benchmark(plan, folder / "losses", models=folder / "models"), folder


@dataclasses.dataclass(frozen=True)
class Interrupted:
    """A backend that stops the driver (as a kill would) after ``after`` models."""

    after: int
    name: str = "interrupted"

    def run(self, task: ShardTask, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Mapping[str, np.ndarray]]]:
        for done, shard in enumerate(shards):
            if done == self.after:
                raise KeyboardInterrupt("driver killed")
            yield shard, task(shard.start, shard.stop)


def test_the_plan_follows_the_protocol(plan: LDSPlan, images: torch.Tensor) -> None:
    assert (plan.n_subsets, plan.n_seeds, plan.n_models, plan.n_queries) == (3, 2, 6, 4)
    assert (plan.masks.sum(axis=1) == 12).all()
    assert [plan.name(r) for r in (0, 1, 5)] == ["subset-000-seed-0", "subset-000-seed-1", "subset-002-seed-1"]
    first, second = plan.train_config(0), plan.train_config(1)
    assert first.n_steps == 2 * math.ceil(12 / 8) and first.seed != second.seed  # seeds differ within a subset
    assert plan.train_config(2).seed == first.seed  # and are shared across subsets
    torch.testing.assert_close(plan.subset_images(2), images[torch.from_numpy(np.flatnonzero(plan.masks[1]))])
    default = LDSPlan.make(LDSBenchmarkConfig(n_subsets=3), MODEL, images, images[:2])
    assert default.config.training is not None and default.config.training.ema_decay == 0.995  # the DDPM recipe
    assert LDSPlan.make(CONFIG.replace(eval_draws=4), MODEL, images, images[:4]).fingerprint() != plan.fingerprint()


def test_the_built_benchmark_equals_the_protocol_run_model_by_model(built, reference, plan) -> None:
    bench, _ = built
    np.testing.assert_array_equal(bench.losses, reference)
    assert bench.losses.dtype == np.float64 and len(np.unique(bench.losses)) == bench.losses.size  # models differ
    np.testing.assert_array_equal(bench.masks, plan.masks)
    np.testing.assert_array_equal(bench.queries, plan.draws.queries.numpy())
    assert bench.val.sum() == 2 and set(bench.kinds) == {"real"}


def test_kept_models_are_the_measured_checkpoints(built, plan) -> None:
    bench, folder = built
    for row in (0, 5):
        ckpt = load_checkpoint(folder / "models" / plan.name(row))
        assert ckpt.training_config == plan.train_config(row)
        assert isinstance(ckpt.model, DDPM)
        np.testing.assert_array_equal(measure_losses(ckpt.model, plan.draws), bench.losses[divmod(row, 2)])
    assert not (folder / "models" / plan.name(0) / "state").exists()  # the checkpoint only, not the training state


def test_a_killed_driver_resumes_with_the_missing_models_only_from_a_carried_store(
    plan, reference, tmp_path, monkeypatch
) -> None:
    store = tmp_path / "losses"
    with pytest.raises(KeyboardInterrupt):
        build_lds_benchmark(plan, store, Interrupted(after=2))
    assert FeatureStore.open(store).missing_shards() == [2, 3, 4, 5]
    assert (store / DRIVER_LOCK_FILE).read_bytes() == b""  # released
    trained: list[int] = []
    real = lds_benchmark.train_ddpm

    def counting(model, recipe, data, folder, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(recipe.seed)
        return real(model, recipe, data, folder, **kwargs)

    monkeypatch.setattr(lds_benchmark, "train_ddpm", counting)
    # carried to another folder (or machine) without its lock files, as results/in-progress/ carries a long run
    carried = tmp_path / "carried"
    carried.mkdir()
    for file in store.iterdir():
        if not file.name.startswith("."):
            shutil.copy(file, carried / file.name)
    bench = build_lds_benchmark(plan, carried)
    assert len(trained) == 4
    np.testing.assert_array_equal(bench.losses, reference)
    assert build_lds_benchmark(plan, carried).losses.tobytes() == bench.losses.tobytes() and len(trained) == 4


def test_a_second_driver_and_another_plan_are_refused(plan, images, queries, tmp_path) -> None:
    store = tmp_path / "losses"
    with driver_lock(store), pytest.raises(StoreLockedError, match="being filled by another driver"):
        build_lds_benchmark(plan, store)
    other = LDSPlan.make(CONFIG.replace(eval_draws=5), MODEL, images, queries)
    with pytest.raises(StoreMismatchError, match="draws"):
        build_lds_benchmark(other, store)


# ------------------------------------------------------------------------------------------ CLI


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_builds_the_benchmark_trak_lds_reads(checkpoint, reference, tmp_path) -> None:
    out = tmp_path / "bench"
    summary = invoke("lds-benchmark", "--model", str(checkpoint), *CLI_ARGS, "--out", str(out))
    assert summary["models"] == 6 and summary["queries"] == {"real": 4} and summary["backend"] == "inprocess"
    bench = LDSBenchmark.load(out / BENCHMARK_FILE)
    np.testing.assert_array_equal(bench.losses, reference)  # the library's numbers: same seeds, data and recipe
    assert json.loads((out / "results.json").read_text())["command"] == "trak lds-benchmark"
    # a re-run resumes the finished store: nothing to train, the same file
    before = (out / BENCHMARK_FILE).read_bytes()
    invoke("lds-benchmark", "--model", str(checkpoint), *CLI_ARGS, "--out", str(out))
    assert (out / BENCHMARK_FILE).read_bytes() == before
    # genprov trak lds scores a store of the same training set against it
    store = tmp_path / "store"
    featurize = ["--model", str(checkpoint), "--data", "digits", "--n", "24", "--seed", "4", "--store", str(store)]
    invoke("featurize", *featurize, "--n-timesteps", "2", "--proj-dim", "16", "--json")
    scored = ["--store", str(store), "--benchmark", str(out / BENCHMARK_FILE), "--out", str(tmp_path / "lds")]
    lds = invoke("lds", *scored, "--n-boot", "20", "--json")
    assert set(lds["lds"]["methods"]["real"]) == {"TRAK", "pixel similarity"}
    assert lds["lds"]["noise_ceiling"]["real"] is not None  # two seeds per subset


def test_cli_takes_a_json_config_sets_and_generated_queries(tmp_path) -> None:
    config = tmp_path / "ddpm.json"
    config.write_text(json.dumps({"model": MODEL.to_dict(), "training": RECIPE.to_dict()}))
    out = tmp_path / "bench"
    args = [*CLI_ARGS, "--generated", "digits", "--set", "training.batch_size=12", "--set", "train_steps=1"]
    summary = invoke("lds-benchmark", "--model", str(config), *args, "--out", str(out))
    assert summary["queries"] == {"generated": 4, "real": 4}
    recorded = json.loads((out / "results.json").read_text())["config"]
    assert recorded["train_steps"] == 1 and recorded["training"]["batch_size"] == 12
    assert recorded["training"]["lr"] == RECIPE.lr  # the file's recipe, changed only where --set says
    bench = LDSBenchmark.load(out / BENCHMARK_FILE)
    assert list(bench.kinds) == ["real"] * 4 + ["generated"] * 4 and bench.val.sum() == 4


def test_cli_refuses_a_second_driver_and_bad_options(checkpoint, tmp_path) -> None:
    out = tmp_path / "bench"
    with driver_lock(out / "losses"):
        result = CliRunner().invoke(app, ["lds-benchmark", "--model", str(checkpoint), *CLI_ARGS, "--out", str(out)])
    assert result.exit_code == 2 and "being filled by another driver" in result.output
    assert not (out / BENCHMARK_FILE).exists()
    for bad, message in (
        (["--model", str(tmp_path / "missing.json")], "expected a DDPM checkpoint folder"),
        (["--model", str(checkpoint), "--workers", "2"], "--workers is for"),
        (["--model", str(checkpoint), "--set", "n_subset=3"], "Did you mean 'n_subsets'"),
    ):
        result = CliRunner().invoke(app, ["lds-benchmark", *bad, *CLI_ARGS, "--out", str(tmp_path / "other")])
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(ConfigError, match="subset_fraction"):
        LDSBenchmarkConfig(subset_fraction=1.0)


# ------------------------------------------------------------------------------------------ reproduce dtrak


def test_the_experiment_builds_its_benchmark_with_the_library_as_its_job_code_did(tmp_path) -> None:
    from genprov.experiments.dtrak.config import DTRAKExperimentConfig
    from genprov.experiments.dtrak.run import _lds_benchmark, _load, _train_recipe

    sizes = {"n_train": 24, "train_epochs": 2, "n_subsets": 3, "n_seeds": 2, "eval_draws": 3, "n_real_queries": 4}
    cfg = DTRAKExperimentConfig.from_dict(
        {"quick": True, **sizes, "n_gen_queries": 0, "counterfactual_queries": 0, "counterfactual_k": 5}
    )
    train, test = _load(cfg)
    bench = _lds_benchmark(cfg, train, test.images, np.array(["real"] * 4), tmp_path / "models", tmp_path, None)
    # the experiment's earlier job code: each model's recipe from _train_recipe with the derived seed
    subsets = random_subsets(len(train), cfg.n_subsets, cfg.subset_fraction, seed=cfg.seed)
    model_cfg = _train_recipe(cfg, 1, cfg.seed, len(train))[0]
    draws = EvalDraws.make(test.images, cfg.eval_draws, model_cfg.num_train_timesteps, cfg.seed)
    for s, j in ((0, 0), (2, 1)):
        seed = int(derive_seed(cfg.seed, "lds-seed", j) % 2**31)
        recipe = TrainConfig.from_dict(_train_recipe(cfg, 1, seed, len(subsets[s]))[1])
        model = train_ddpm(
            model_cfg, recipe, train.images[torch.as_tensor(subsets[s])], tmp_path / f"old-{s}-{j}"
        ).model
        assert isinstance(model, DDPM)
        np.testing.assert_array_equal(bench.losses[s, j], measure_losses(model, draws))
    assert sorted(p.name for p in (tmp_path / "models").iterdir())[0] == "subset-000-seed-0"  # its model cache
    expected_val = LDSBenchmark.empty(test.images.numpy(), bench.kinds).with_validation_split(cfg.seed).val
    np.testing.assert_array_equal(bench.val, expected_val)


def test_the_experiments_worker_processes_give_the_same_losses(plan, reference, tmp_path) -> None:
    from genprov.experiments.dtrak.run import _backend

    bench = build_lds_benchmark(plan, tmp_path / "losses", _backend(2))  # n_workers=2: two spawned processes
    np.testing.assert_array_equal(bench.losses, reference)
