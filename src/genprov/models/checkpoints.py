"""Model checkpoints: a folder with ``config.json`` and ``model.safetensors``; nothing is pickled.

``config.json``::

    {"genprov_version": "0.1.0", "kind": "gan", "modules": ["generator", "discriminator"],
     "model": {...GANConfig...}, "training": {...TrainConfig...} | null, "extra": {...}}

``model.safetensors`` holds every module's ``state_dict`` under the module's name as prefix
(``generator.body.0.weight``, ``ddpm.unet.conv_in.weight``, ...). :data:`MODEL_KINDS` maps each kind to
its config class and builder, so :func:`load_checkpoint` rebuilds the modules from the config and then
checks the tensors against them, naming the keys and shapes that differ.

Every safetensors file records the SHA-256 of its tensor data in its metadata (``genprov_sha256``,
:mod:`genprov.utils.checksums`); :func:`load_tensors` verifies it, so flipped bytes are refused with the
file named. :func:`save_checkpoint` refuses a folder holding another kind of artefact
(:func:`genprov.utils.artifacts.check_output_folder`).

Optimiser states (for resumable training) use the same two files idea: tensors in safetensors, the
non-tensor structure in JSON (:func:`flatten_optimizer_state` / :func:`unflatten_optimizer_state`).
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from genprov.config import Config
from genprov.exceptions import CheckpointError, GenprovError
from genprov.models.classifiers import ClassifierConfig, build_classifier
from genprov.models.diffusion import DDPMConfig, build_ddpm
from genprov.models.gans import GANConfig, build_gan
from genprov.models.tabular import TabularGANConfig, build_tabular_gan
from genprov.models.train_config import TrainConfig
from genprov.utils.artifacts import INCOMPLETE_CHECKPOINT, check_output_folder, refuse_pickle
from genprov.utils.checksums import sign_safetensors, verify_safetensors
from genprov.utils.io import atomic_write_bytes, atomic_write_json, read_json

__all__ = [
    "CONFIG_FILE",
    "MODEL_KINDS",
    "WEIGHTS_FILE",
    "LoadedCheckpoint",
    "ModelKind",
    "check_state",
    "checkpoint_source",
    "flatten_optimizer_state",
    "genprov_version",
    "is_checkpoint",
    "load_checkpoint",
    "load_modules",
    "load_tensors",
    "save_checkpoint",
    "save_tensors",
    "state_tensors",
    "unflatten_optimizer_state",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_MAX_LISTED = 5
# module -> (checkpoint folder, module name) for every module built by load_checkpoint
_SOURCES: weakref.WeakKeyDictionary[nn.Module, tuple[Path, str]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How to rebuild one kind of model from its config.

    Attributes:
        name: The ``"kind"`` written in ``config.json``.
        config_type: The model config class.
        build: ``config -> {module name: fresh module}``.
        primary: Name of the module :attr:`LoadedCheckpoint.model` returns (what you sample from).
    """

    name: str
    config_type: type[Config]
    build: Callable[[Any], dict[str, nn.Module]]
    primary: str


MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("gan", GANConfig, build_gan, "generator"),
        ModelKind("ddpm", DDPMConfig, build_ddpm, "ddpm"),
        ModelKind("classifier", ClassifierConfig, build_classifier, "classifier"),
        ModelKind("tabular-gan", TabularGANConfig, build_tabular_gan, "generator"),
    )
}


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint read back by :func:`load_checkpoint` (modules in eval mode).

    Attributes:
        kind: ``"gan"``, ``"ddpm"``, ``"classifier"`` or ``"tabular-gan"``.
        model_config: The model config object (e.g. :class:`GANConfig`).
        training_config: The :class:`TrainConfig` it was trained with, or ``None``.
        modules: ``{name: module}`` for every module stored (e.g. generator and discriminator).
        extra: Free-form metadata (training step, dataset fingerprint, ...).
        path: The checkpoint folder.
        genprov_version: Version of genprov that wrote it.
    """

    kind: str
    model_config: Config
    training_config: TrainConfig | None
    modules: dict[str, nn.Module]
    extra: dict[str, Any]
    path: Path
    genprov_version: str

    @property
    def model(self) -> nn.Module:
        """The main module: the generator (GANs), the ``DDPM`` or the classifier."""
        name = MODEL_KINDS[self.kind].primary
        if name not in self.modules:
            raise CheckpointError(
                f"Checkpoint {self.path} holds no {name!r} module (it holds {sorted(self.modules)}); "
                f"it cannot be used as a {self.kind} model."
            )
        return self.modules[name]


def genprov_version() -> str:
    """The installed genprov version (``"unknown"`` in an uninstalled source tree); recorded in every artefact."""
    try:
        return metadata.version("genprov")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _kind(kind: str) -> ModelKind:
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"Unknown checkpoint kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}.")
    return MODEL_KINDS[kind]


def state_tensors(modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """``{f"{name}.{key}": tensor}`` over the modules' state dicts (detached, contiguous, on CPU)."""
    out: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file at ``path`` atomically, with the SHA-256 of its tensor data
    in its metadata (checked by :func:`load_tensors`)."""
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    atomic_write_bytes(path, sign_safetensors(data))


def load_tensors(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file, verifying its recorded SHA-256 (files written before checksums: unchecked).

    Raises:
        CheckpointError: The file is missing, a pickle file, unreadable, or does not match its checksum.
    """
    path = Path(path)
    refuse_pickle(path, "a weights file")
    if not path.is_file():
        raise CheckpointError(f"Tensor file {path} does not exist.")
    data = path.read_bytes()
    verify_safetensors(data, path)
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types (and OSError) on bad files
        raise CheckpointError(
            f"Cannot read {path}: {err}. The file is truncated or corrupted; re-create it (e.g. retrain, "
            "or restore it from a copy)."
        ) from err
    return {k: v.to(device) for k, v in tensors.items()}


def save_checkpoint(
    folder: str | Path,
    kind: str,
    modules: Mapping[str, nn.Module],
    model_config: Config,
    training_config: Config | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder (``config.json`` + ``model.safetensors``), each file atomically.

    Args:
        folder: Destination folder (created).
        kind: A key of :data:`MODEL_KINDS`.
        modules: ``{name: module}``; names must be among those the kind's builder returns
            (e.g. ``{"generator": G}`` alone is fine for a GAN).
        model_config: The model's config (an instance of the kind's config class).
        training_config: The training config, if any.
        extra: JSON-serialisable metadata.

    Returns:
        The folder.
    """
    spec = _kind(kind)
    if not isinstance(model_config, spec.config_type):
        raise CheckpointError(
            f"A {kind!r} checkpoint needs a {spec.config_type.__name__}; got {type(model_config).__name__}."
        )
    if not modules:
        raise CheckpointError("save_checkpoint needs at least one module to save; got none.")
    folder = Path(folder)
    check_output_folder(folder, accept={f"{kind} checkpoint", INCOMPLETE_CHECKPOINT}, option="--out")
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS_FILE, state_tensors(modules), metadata={"kind": kind})
    atomic_write_json(
        folder / CONFIG_FILE,
        {
            "genprov_version": genprov_version(),
            "kind": kind,
            "modules": list(modules),
            "model": model_config.to_dict(),
            "training": training_config.to_dict() if training_config is not None else None,
            "extra": dict(extra or {}),
        },
    )
    return folder


def is_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds both checkpoint files."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _read_config(folder: Path) -> dict[str, Any]:
    refuse_pickle(folder)
    if folder.is_file():
        parent = (
            f" (pass the folder that holds it, {folder.parent})" if folder.name in (CONFIG_FILE, WEIGHTS_FILE) else ""
        )
        raise CheckpointError(
            f"{folder} is a file, not a checkpoint folder{parent}; a genprov checkpoint is a folder holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}, written by 'genprov train'."
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"No checkpoint at {folder}: the folder does not exist. Train one first, e.g. "
            f"'genprov train gan --data digits --out {folder}'."
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a checkpoint: {path} is missing (a checkpoint folder holds {CONFIG_FILE} "
            f"and {WEIGHTS_FILE})."
        )
    try:
        data = read_json(path)
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise CheckpointError(f"Cannot read {path}: {err}. The file is corrupted; re-create the checkpoint.") from err
    if not isinstance(data, dict) or "kind" not in data or "model" not in data:
        raise CheckpointError(f"{path} is not a genprov checkpoint config (it needs 'kind' and 'model' entries).")
    return data


def _describe(keys: list[str], tensors: Mapping[str, Tensor] | None = None) -> str:
    shown = [f"{k} {tuple(tensors[k].shape)}" if tensors is not None else k for k in keys[:_MAX_LISTED]]
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def check_state(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], *, where: str, hint: str = "") -> None:
    """Raise :class:`CheckpointError` if ``found`` has other keys or shapes than ``expected``.

    Args:
        expected: ``{key: tensor}`` the model needs (from :func:`state_tensors` of fresh modules).
        found: ``{key: tensor}`` read from disk.
        where: The file, for the message.
        hint: What to do about it, appended to the message.
    """
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    wrong = sorted(k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape))
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing, expected)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected, found)}")
    if wrong:
        shown = [f"{k} (file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})" for k in wrong[:_MAX_LISTED]]
        more = f" and {len(wrong) - _MAX_LISTED} more" if len(wrong) > _MAX_LISTED else ""
        parts.append("shape mismatches: " + ", ".join(shown) + more)
    raise CheckpointError(f"{where} does not match its config: " + "; ".join(parts) + "." + hint)


def load_checkpoint(folder: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the modules of a checkpoint from its config and load its tensors.

    Args:
        folder: A folder written by :func:`save_checkpoint` (or by a trainer).
        device: Where to put the modules.

    Returns:
        The :class:`LoadedCheckpoint`, modules in eval mode.

    Raises:
        CheckpointError: The folder or a file is missing or unreadable, ``folder`` is a file (a pickle
            file is explained), the kind or config is invalid, the weights do not match their recorded
            SHA-256, hold NaN or infinite values, or do not match the config (names the first keys and
            shapes that differ).
    """
    folder = Path(folder)
    data = _read_config(folder)
    spec = _kind(str(data["kind"]))
    config_path = folder / CONFIG_FILE
    try:
        model_config = spec.config_type.from_dict(data["model"])
        training = data.get("training")
        training_config = TrainConfig.from_dict(training) if training is not None else None
    except GenprovError as err:
        raise CheckpointError(f"{config_path} holds an invalid config: {err}") from err
    all_modules = spec.build(model_config)
    names = data.get("modules", list(all_modules))
    unknown = [n for n in names if n not in all_modules]
    if unknown:
        raise CheckpointError(
            f"{config_path} lists modules {unknown} that a {spec.name!r} model does not have "
            f"(it has {sorted(all_modules)})."
        )
    modules = {n: all_modules[n] for n in names}
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"Checkpoint {folder} is incomplete: {weights} is missing.")
    tensors = load_tensors(weights)
    check_state(
        state_tensors(modules),
        tensors,
        where=str(weights),
        hint=f" Was {CONFIG_FILE} edited or copied from another model?",
    )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{weights} holds NaN or infinite weights ({_describe(sorted(bad))}): the training diverged or the file "
            "is damaged; retrain it (e.g. with a lower --lr) or restore it from a copy."
        )
    load_modules(modules, tensors)
    for name, module in modules.items():
        module.to(device).eval()
        _SOURCES[module] = (folder.resolve(), name)
    return LoadedCheckpoint(
        kind=spec.name,
        model_config=model_config,
        training_config=training_config,
        modules=modules,
        extra=dict(data.get("extra") or {}),
        path=folder,
        genprov_version=str(data.get("genprov_version", "unknown")),
    )


def checkpoint_source(module: nn.Module) -> tuple[Path, str] | None:
    """``(checkpoint folder, module name)`` of a module built by :func:`load_checkpoint`, else ``None``.

    Fitted artefacts record it (:mod:`genprov.models.artifact`) so that they reopen without the module.
    """
    return _SOURCES.get(module)


def load_modules(modules: Mapping[str, nn.Module], tensors: Mapping[str, Tensor]) -> None:
    """Load ``tensors`` (keys ``"{name}.{key}"``) into ``modules`` (strict; check with :func:`check_state` first)."""
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)


# ------------------------------------------------------------------------------------------ optimiser states


def flatten_optimizer_state(prefix: str, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Split an optimiser ``state_dict()`` into a JSON-able structure and named tensors.

    Args:
        prefix: Prefix of the tensor names (e.g. ``"optimizer.generator"``).
        state: ``optimizer.state_dict()``.

    Returns:
        ``(structure, tensors)``; tensors are replaced by ``{"__tensor__": name}`` in ``structure``.
    """
    tensors: dict[str, Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        flat: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                name = f"{prefix}.{pid}.{key}"
                tensors[name] = value
                flat[key] = {"__tensor__": name}
            else:
                flat[key] = value
        per_param[str(pid)] = flat
    structure = {"state": per_param, "param_groups": json.loads(json.dumps(state["param_groups"]))}
    return structure, tensors


def unflatten_optimizer_state(structure: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for pid, entry in structure["state"].items():
            state[int(pid)] = {
                k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
                for k, v in entry.items()
            }
        groups = [
            {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in group.items()}
            for group in structure["param_groups"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"Optimiser state is inconsistent with its tensors: {err!r}.") from err
    return {"state": state, "param_groups": groups}
