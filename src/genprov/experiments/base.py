"""What every paper reproduction shares: its config base and the ``EXPERIMENTS`` registry.

An experiment package registers a runner ``run(config, out_dir, *, data_root, show_progress)`` returning
its typed, frozen :class:`ExperimentResult`, with its config class (a subclass of :class:`ExperimentConfig`)::

    @EXPERIMENTS.register("flipad", config=FlipadExperimentConfig)
    def run_flipad(config, out_dir, *, data_root=None, show_progress=None) -> FlipadResult: ...

``genprov reproduce NAME --data D --seed N [--quick] [--set key=value ...] --out DIR`` then builds the config
from the options and calls the runner, which writes ``results.json`` (the result's :meth:`~ExperimentResult.to_dict`)
and ``report.html`` into ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from genprov.config import Config, require
from genprov.exceptions import ConfigError
from genprov.registry import Registry
from genprov.utils.io import atomic_write_json, json_safe, read_json

__all__ = [
    "EXPERIMENTS",
    "GAN_DATA_SIZES",
    "GAN_DEFAULT_SIDE",
    "ExperimentConfig",
    "ExperimentResult",
    "ExperimentRunner",
    "Laps",
    "gan_preset_values",
    "gan_side",
    "json_key",
    "provenance",
    "run_experiment",
    "start_run",
]


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    """Base of every experiment's result: a frozen dataclass whose :meth:`to_dict` is ``results.json``.

    Fields serialise in declaration order under their names (or the key given by :func:`json_key`);
    nested dataclasses (table rows), mappings and sequences serialise recursively.
    """

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form written to ``results.json`` (non-finite floats as ``null``); a nested object
        with its own ``to_dict`` (a config, a ``MeanCI``, a row with a computed shape) serialises by it."""
        plain = json_safe(_plain(self))
        assert isinstance(plain, dict)
        return plain

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        atomic_write_json(path, self.to_dict())


def json_key(key: str | None = None, *, inline: bool = False) -> dict[str, Any]:
    """Field metadata (``dataclasses.field(metadata=json_key(...))``) that serialises the field under ``key``
    (e.g. ``"non-adaptive"``) or, with ``inline``, writes its own fields into the enclosing object."""
    return {"json_key": key, "inline": inline}


def _plain(value: Any) -> Any:
    if isinstance(value, ExperimentResult):
        return _fields(value)
    if callable(getattr(value, "to_dict", None)):  # configs, MeanCI, rows with their own JSON shape
        return _plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass's fields in declaration order, under their :func:`json_key` names."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = _plain(getattr(value, f.name))
        if f.metadata.get("inline"):
            out.update(item)
        else:
            out[f.metadata.get("json_key") or f.name] = item
    return out


ExperimentRunner = Callable[..., ExperimentResult]

#: Paper reproductions: name -> runner(config, out_dir, *, data_root, show_progress) -> typed result.
EXPERIMENTS: Registry[ExperimentResult] = Registry("experiment")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig(Config):
    """Fields every reproduction takes.

    Attributes:
        data: Dataset name (``digits`` needs no files) or path.
        seed: Seed of every model and random choice.
        quick: A smaller run that finishes in minutes (for smoke tests); reports say so.
    """

    data: str = "digits"
    seed: int = 0
    quick: bool = False
    #: Fields that choose a preset of their own (e.g. D-TRAK's ``budget``): :func:`provenance` compares a
    #: config with the preset they select, so the recorded command names them and only what differs.
    preset_selectors: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", "a non-negative integer", self.seed)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Field values of the dataset's preset and, with ``quick``, the few-minute sizes (none by default).

        :meth:`from_dict` applies them before the keys it is given; subclasses override this.
        """
        return {}

    @classmethod
    def from_dict(cls: type[_E], data: Mapping[str, Any]) -> _E:
        """Build from a dict, starting from :meth:`preset_values` of ``data["data"]`` and ``data["quick"]``.

        Nested config dicts (e.g. ``family``) merge key by key with the preset's.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping of field names to values; got {type(data).__name__}.")
        base = cls.preset_values(str(data.get("data", "digits")), bool(data.get("quick", False)))
        merged = {**base, **data}
        for key, value in base.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
                merged[key] = {**value, **data[key]}
        return super().from_dict(merged)

    @classmethod
    def preset_for(cls: type[_E], data: str = "digits", *, seed: int = 0, quick: bool = False, **values: Any) -> _E:
        """The full run on ``data`` or, with ``quick``, the few-minute smoke run (``values`` override fields)."""
        return cls.from_dict({"data": data, "seed": seed, "quick": quick, **values})


_E = TypeVar("_E", bound=ExperimentConfig)

#: Image side the GAN reproductions (FLIPAD, keyed) work on per dataset; any other dataset (a name or a
#: path) is resized to :data:`GAN_DEFAULT_SIDE` unless the run's ``image_size`` says otherwise.
GAN_DATA_SIZES: Mapping[str, int] = {"digits": 16, "mnist": 28, "fashion-mnist": 28}
GAN_DEFAULT_SIDE = 16


def gan_side(data: str, image_size: int | None) -> int:
    """The image side of a GAN reproduction on ``data``: ``image_size`` when given, else the dataset's
    entry in :data:`GAN_DATA_SIZES`, else :data:`GAN_DEFAULT_SIDE`."""
    if image_size is not None:
        return image_size
    return GAN_DATA_SIZES.get(data, GAN_DEFAULT_SIDE)


def gan_preset_values(data: str, quick: bool, quick_values: Mapping[str, Any]) -> dict[str, Any]:
    """The preset of a GAN reproduction (its :meth:`ExperimentConfig.preset_values`): 10,000 GAN training
    images (``n_gan_train``) for MNIST and Fashion-MNIST (every image of other data) and, with ``quick``,
    ``quick_values`` (the few-minute sizes)."""
    values: dict[str, Any] = {"n_gan_train": 10_000} if data in ("mnist", "fashion-mnist") else {}
    if quick:
        values.update(quick_values)
    return values


class Laps:
    """A run's stopwatch: ``lap(name)`` records the seconds since the previous mark (rounded to 0.01 s) in
    :attr:`timings` (a result's ``timings_seconds``) and starts the next lap."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def restart(self) -> None:
        """Start the next lap now (time since the previous mark is not recorded)."""
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 2)
        self._clock = now


def start_run(config: _E, out_dir: str | Path, data_root: str | Path | None) -> tuple[_E, Path]:
    """What a runner does first: ``config`` with ``data_root`` (when given, it overrides the config's own
    ``data_root`` field), and ``out_dir`` created."""
    if data_root is not None:
        config = config.replace(data_root=str(data_root))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return config, out


def run_experiment(
    name: str,
    config: ExperimentConfig | dict[str, Any] | None,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> ExperimentResult:
    """Run the registered experiment ``name`` (config as object, dict or ``None`` for defaults); its typed
    result (``.to_dict()`` is what ``results.json`` holds, which also gets a ``provenance`` entry: see
    :func:`provenance`)."""
    entry = EXPERIMENTS.entry(name)
    cfg_type = entry.config or ExperimentConfig
    cfg: Config = cfg_type.from_dict(config or {}) if not isinstance(config, Config) else config
    assert isinstance(cfg, ExperimentConfig)
    recorded = cfg
    if data_root is not None and "data_root" in {f.name for f in dataclasses.fields(cfg)}:
        recorded = cfg.replace(data_root=str(data_root))
    source = provenance(name, recorded)  # the code as it was when the run started
    result = entry.factory(cfg, Path(out_dir), data_root=data_root, show_progress=show_progress)
    results_path = Path(out_dir) / "results.json"
    if results_path.is_file():  # every runner writes it; the provenance goes beside what it measured
        source["finished_utc"] = _utc_now()
        atomic_write_json(results_path, {**read_json(results_path), "provenance": source})
    return result


#: Packages whose versions a result records (those installed).
_VERSIONED = ("genprov", "numpy", "scipy", "scikit-learn", "torch", "diffusers", "transformers", "peft")


def provenance(name: str, config: ExperimentConfig) -> dict[str, Any]:
    """What re-creates a result of experiment ``name`` run with ``config``: the ``genprov reproduce``
    command (every value that differs from the preset of its data, seed and ``--quick`` as ``--set``),
    the seed, the package versions, the Python and platform, the git commit of the source when it is a
    checkout (with ``+dirty`` when it had uncommitted changes) and the UTC time (:func:`run_experiment`
    takes the commit when the run starts and the time when it ends)."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    selected = {key: getattr(config, key) for key in config.preset_selectors if getattr(config, key) != defaults[key]}
    preset = type(config).preset_for(config.data, seed=config.seed, quick=config.quick, **selected).to_dict()
    changed = {**{key: json_safe(value) for key, value in selected.items()}, **_changed(preset, config.to_dict())}
    argv = ["genprov", "reproduce", name, "--data", config.data, "--seed", str(config.seed)]
    if config.quick:
        argv.append("--quick")
    if "data_root" in changed:
        argv += ["--data-root", str(changed.pop("data_root"))]
    for key, value in changed.items():
        argv += ["--set", f"{key}={_set_value(value)}"]
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "command": shlex.join(argv),
        "seed": config.seed,
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git_commit(),
        "finished_utc": _utc_now(),
    }


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_value(value: Any) -> str:
    """``value`` as ``--set`` reads it back: a plain word as itself, anything else as compact JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            if value and not value.startswith(("[", "{", '"')):
                return value
    return json.dumps(value, separators=(",", ":"))


def _changed(preset: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted keys (``detector.n_epochs``) whose value in ``current`` differs from ``preset``."""
    out: dict[str, Any] = {}
    for key, value in current.items():
        base = preset.get(key)
        if isinstance(value, Mapping) and isinstance(base, Mapping):
            out.update(_changed(base, value, f"{prefix}{key}."))
        elif key not in preset or json_safe(base) != json_safe(value):
            out[f"{prefix}{key}"] = json_safe(value)
    return out


def _git_commit() -> str | None:
    """``HEAD`` of the checkout genprov runs from (``+dirty`` with uncommitted changes); ``None`` outside one."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head
