"""Every CLI option that sets a config field takes its default from the config class (a default lives once).

The options are read from the typer app (the defaults the command line really uses, as click sees them) and
compared with the dataclass fields. An option whose name is a config field but which is declared with a
literal instead of :func:`genprov.cli.common.config_option` fails unless it is listed in ``NOT_CONFIG``
with the reason it does not set that field.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS, FinalLayerInversionAttributorConfig
from genprov.cli import flipad as flipad_cli
from genprov.cli.common import CONFIG_FIELD_ATTR, config_default, config_field_help, config_option
from genprov.cli.main import app
from genprov.config import Config
from genprov.eval.customization import N_VAL_CLASSES
from genprov.experiments.similarity import SimilarityExperimentConfig
from genprov.models.gans import GANConfig
from genprov.models.train_config import COMMAND_STEPS, TrainConfig

#: Deliberate differences from the config's default: (command, parameter) -> the named constant it uses.
OVERRIDES: dict[tuple[str, str], Any] = {
    ("train gan", "steps"): COMMAND_STEPS["gan"],
    ("train ddpm", "steps"): COMMAND_STEPS["ddpm"],
}

#: Options named like a config field that set no config field, and why.
NOT_CONFIG: dict[tuple[str, str], str] = {
    ("train gan", "data"): "the dataset to train on (no config holds it)",
    ("train ddpm", "data"): "the dataset to train on (no config holds it)",
    ("train classifier", "data"): "the dataset to train on (no config holds it)",
    ("train t2i", "data"): "the dataset to train on (no config holds it)",
    ("train t2i", "quick"): "chooses models.t2i.T2I_QUICK's sizes",
    ("train lora", "data"): "the dataset to fine-tune on (no config holds it)",
    ("train lora", "n"): "exemplars read by the command",
    ("train t2i", "captions"): "where the captions come from (labels or a file), read by the command",
    ("train lora", "captions"): "where the captions come from (labels or a file), read by the command",
    ("sample", "guidance_scale"): "an argument of models.t2i.sample_pipeline (same default)",
    ("train ddpm", "preset"): "a DDPMConfig preset name, not a field",
    ("sample", "n"): "an argument of models.sampling.sample",
    ("sample", "ddim_steps"): "an argument of models.sampling.sample (same default)",
    ("sample", "eta"): "an argument of models.sampling.sample (same default)",
    ("sample", "batch_size"): "an argument of models.sampling.sample (same default)",
    ("flipad fit", "n_samples"): "generator samples drawn by the command",
    ("flipad fit", "n_real"): "real images read by the command",
    ("trak lds", "n_boot"): "an argument of eval.lds.evaluate_lds",
    ("similarity tune", "n_val_classes"): "an argument of tune_on_customizations (eval.customization.N_VAL_CLASSES)",
    ("privacy audit", "quick"): "chooses eval.privacy_audit's quick sizes",
}

#: A shared option: every config with a ``seed`` field defaults it to 0 (checked below).
SHARED = {"seed"}


def _commands(typer_app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(command path, callback)`` of every command of the app, sub-apps included."""
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
        yield f"{prefix}{name}", info.callback
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        yield from _commands(group.typer_instance, f"{prefix}{group.name} ")


ROOT = typer.main.get_command(app)


def _click_command(path: str) -> Any:
    """The click command typer builds for ``path`` (what the command line really parses)."""
    command: Any = ROOT
    for part in path.split():
        command = command.commands[part]
    return command


def _config_classes() -> list[type[Config]]:
    def walk(cls: type[Config]) -> Iterator[type[Config]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return list(set(walk(Config)))


def _all_options() -> list[tuple[str, str, Any, Any]]:
    """``(command, parameter, OptionInfo, click default)`` of every option of every command."""
    rows = []
    for path, callback in _commands(app):
        params = {p.name: p for p in _click_command(path).params}
        for name, parameter in inspect.signature(callback).parameters.items():
            info = parameter.default
            if isinstance(info, typer.models.OptionInfo):
                rows.append((path, name, info, params[name].default))
    return rows


OPTIONS = _all_options()
CONFIG_OPTIONS = [row for row in OPTIONS if hasattr(row[2], CONFIG_FIELD_ATTR)]


def test_every_command_group_is_seen() -> None:
    paths = {path.split()[0] for path, *_ in OPTIONS}
    assert {"train", "sample", "flipad", "keyed", "trak", "similarity", "privacy", "explain"} <= paths
    assert {"serve", "demo", "reproduce"} <= paths
    assert len(CONFIG_OPTIONS) >= 20


@pytest.mark.parametrize(("path", "name", "info", "default"), CONFIG_OPTIONS, ids=lambda v: str(v)[:30])
def test_config_options_have_the_config_default(path: str, name: str, info: Any, default: Any) -> None:
    config, field = getattr(info, CONFIG_FIELD_ATTR)
    expected = OVERRIDES.get((path, name), config_default(config, field))
    assert default is None or default == expected, (
        f"genprov {path} --{name.replace('_', '-')} defaults to {default!r}, but {config.__name__}.{field} to "
        f"{config_default(config, field)!r}: take the config's default (or list a named constant in OVERRIDES)."
    )
    if (path, name) in OVERRIDES:
        assert f"{config.__name__}.{field}: {config_default(config, field)}" in (info.help or "")


def test_no_option_copies_a_config_default() -> None:
    fields = {f.name for cls in _config_classes() for f in dataclasses.fields(cls)}
    copied = [
        f"genprov {path} --{name.replace('_', '-')}={default!r}"
        for path, name, info, default in OPTIONS
        if name in fields
        and name not in SHARED
        and default not in (None, [], ())
        and not hasattr(info, CONFIG_FIELD_ATTR)
        and (path, name) not in NOT_CONFIG
    ]
    assert not copied, f"declare these with config_option (or list them in NOT_CONFIG with a reason): {copied}"


def test_not_config_list_names_real_options() -> None:
    present = {(path, name) for path, name, *_ in OPTIONS}
    assert set(NOT_CONFIG) <= present
    assert set(OVERRIDES) <= {(path, name) for path, name, *_ in CONFIG_OPTIONS}


def test_shared_seed_matches_every_config() -> None:
    seeds = {cls.__name__: f.default for cls in _config_classes() for f in dataclasses.fields(cls) if f.name == "seed"}
    assert seeds and set(seeds.values()) == {0}, seeds
    assert {default for path, name, _, default in OPTIONS if name == "seed"} == {0}


def test_options_that_are_arguments_keep_the_library_constant() -> None:
    tune = {name: default for path, name, _, default in OPTIONS if path == "similarity tune"}
    assert tune["n_val_classes"] == N_VAL_CLASSES == SimilarityExperimentConfig().n_val_classes


def test_flipad_starts_from_the_named_image_settings() -> None:
    config = flipad_cli._method_config("flipad", 3, [])
    assert config == FinalLayerInversionAttributorConfig(**FLIPAD_IMAGE_SETTINGS, seed=3)
    assert flipad_cli._method_config("flipad", 3, ["max_iter=7"]).max_iter == 7  # type: ignore[union-attr]


def test_config_option_reads_default_and_description() -> None:
    info = config_option(GANConfig, "latent_dim", "--latent-dim")
    assert info.default == 32 == GANConfig().latent_dim
    assert info.help == "Dimension of the Gaussian latent vector z."
    assert getattr(info, CONFIG_FIELD_ATTR) == (GANConfig, "latent_dim")
    assert "Default: 64." in (config_option(TrainConfig, "batch_size", "--batch-size", default=None).help or "")


def test_config_option_refuses_an_unexplained_default() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        config_option(TrainConfig, "n_steps", "--steps", default=5)
    with pytest.raises(AttributeError, match="no field"):
        config_option(TrainConfig, "nsteps", "--steps")


def test_field_help_prefers_metadata_and_follows_the_bases() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Base(Config):
        """Base.

        Attributes:
            width: Feature maps,
                continued on a second line.
        """

        width: int = 3

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Child(Base):
        """Child (documents only ``depth``).

        Attributes:
            depth: How deep (see :class:`~genprov.models.gans.GANConfig`).
        """

        depth: int = 2
        tag: tuple[str, ...] = dataclasses.field(default=("a", "b"), metadata={"help": "Tags."})

    assert config_field_help(Child, "width") == "Feature maps, continued on a second line."
    assert config_field_help(Child, "depth") == "How deep (see GANConfig)."
    assert config_field_help(Child, "tag") == "Tags."
    assert config_default(Child, "tag") == "a,b"
