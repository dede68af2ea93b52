"""``results.json``'s provenance: its command re-creates the config it ran with."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from genprov.cli.common import parse_sets
from genprov.experiments import EXPERIMENTS
from genprov.experiments.base import provenance


def _config_from_command(name: str, command: str) -> Any:
    argv = shlex.split(command)
    assert argv[:3] == ["genprov", "reproduce", name]
    values: dict[str, Any] = {"quick": "--quick" in argv}
    for i, arg in enumerate(argv):
        if arg == "--data":
            values["data"] = argv[i + 1]
        elif arg == "--seed":
            values["seed"] = int(argv[i + 1])
        elif arg == "--data-root":
            values["data_root"] = argv[i + 1]
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    return EXPERIMENTS.config_type(name).from_dict({**values, **parse_sets(sets)})


CASES = [
    ("dtrak", {"budget": "reduced", "n_subsets": 16}),
    ("dtrak", {"data": "mnist", "data_root": "../shared/data", "quick": True}),
    ("gnime", {"defense_variant": "residual", "a_sweep": [1, 100], "gnime": {"lr": 1e-4}}),
    ("gnime", {"explainer": "lrp", "seed": 3, "ablation": True}),
    ("keyed", {"family": {"robust_steps": 7500}, "variants": [], "image_size": 32}),
    ("keyed", {"protocol": "genprov-v1", "family": {"robust_lr": 1e-3}}),
    ("flipad", {"val_reals": "gan-train", "data": "runs/my faces.npz"}),
    ("similarity", {"extractors": ["pixels"], "quick": True}),
]


@pytest.mark.parametrize(("name", "values"), CASES)
def test_command_recreates_the_config(name: str, values: dict[str, Any]) -> None:
    config = EXPERIMENTS.config_type(name).from_dict(values)
    record = provenance(name, config)
    assert _config_from_command(name, record["command"]) == config
    assert record["seed"] == config.seed and "genprov" in record["versions"]


def test_defaults_give_the_bare_command() -> None:
    config = EXPERIMENTS.config_type("dtrak").from_dict({})
    assert provenance("dtrak", config)["command"] == "genprov reproduce dtrak --data digits --seed 0"
