"""Shared pieces of the command-line front end: output, error handling, common options.

Every option that sets a config field is declared with :func:`config_option`, which takes its default
and its description from the config class, so that a default lives in one place (the config); a command
whose default deliberately differs names a constant kept next to the config and says why in the help.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from genprov.config import Config
from genprov.exceptions import ConfigError, GenprovError
from genprov.storage.shards import BACKENDS

__all__ = [
    "ADDRESS_OPTION",
    "DATA_ROOT_OPTION",
    "JSON_OPTION",
    "SEED_OPTION",
    "backend_option",
    "config_default",
    "config_field_help",
    "config_option",
    "console",
    "emit",
    "handle_errors",
    "ignore_file_size_signal",
    "merge_dicts",
    "os_error_message",
    "parse_sets",
    "print_table",
    "workers_option",
]

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

SEED_OPTION = typer.Option(0, "--seed", help="Seed for every random choice; the same seed gives the same numbers.")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of a table.")


def backend_option(work: str, detail: str, same: str) -> Any:
    """``--backend`` of a sharded command (``storage.shards.make_backend``): "Where ``work``: inprocess, processes or
    ray (``detail``; ray needs genprov's 'ray' extra). ``same`` are the same either way."."""
    return typer.Option(
        "inprocess",
        "--backend",
        help=f"Where {work}: {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]} ({detail}; ray needs genprov's 'ray' extra). {same} are the "
        "same either way.",
    )


def workers_option(unit: str) -> Any:
    """``--workers`` of a sharded command: ``unit`` computed at once."""
    return typer.Option(1, "--workers", min=1, help=f"--backend processes or ray: {unit} at once.")


#: ``--address`` of every command with ``--backend ray`` (``storage.shards.make_backend``).
ADDRESS_OPTION = typer.Option(
    None,
    "--address",
    help="--backend ray: 'auto' (the cluster 'ray start --head' started on this machine) or HOST:PORT of a "
    "cluster's head; default: a local Ray with --workers CPUs.",
)
DATA_ROOT_OPTION = typer.Option(
    None,
    "--data-root",
    envvar="GENPROV_DATA",
    help="Folder holding dataset files (mnist/, fashion_mnist/, cifar10_convnetjs/, faces/). Env: GENPROV_DATA.",
)


#: Attribute of a typer ``OptionInfo`` made by :func:`config_option`: the ``(config class, field)`` it sets.
CONFIG_FIELD_ATTR = "genprov_config_field"
_FROM_CONFIG: Any = object()  # config_option's "no default given": take the config's


def _field(config: type[Config], name: str) -> dataclasses.Field[Any]:
    fields = {f.name: f for f in dataclasses.fields(config)}
    if name not in fields:  # a programming error in a command's declaration
        raise AttributeError(f"{config.__name__} has no field {name!r}")
    return fields[name]


def config_default(config: type[Config], name: str) -> Any:
    """The default of field ``name`` of ``config`` as an option takes it (a tuple of names joins with commas)."""
    field = _field(config, name)
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


_ATTRIBUTE_LINE = re.compile(r"^(\s*)(\w+): (.*)$")
_ROLE = re.compile(r":\w+:`~?([\w.]+)`")  # :class:`~genprov.x.Name` -> Name


def _plain(text: str) -> str:
    """Docstring markup as plain terminal text."""
    return _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")


def config_field_help(config: type[Config], name: str) -> str:
    """The description of field ``name``: its ``metadata["help"]``, else its entry in the ``Attributes:``
    section of the docstring of ``config`` or of the first base class documenting it (empty if none)."""
    field = _field(config, name)
    if "help" in field.metadata:
        return str(field.metadata["help"])
    for cls in config.__mro__:
        lines = (cls.__dict__.get("__doc__") or "").splitlines()
        start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
        if start is None:
            continue
        for i in range(start + 1, len(lines)):
            match = _ATTRIBUTE_LINE.match(lines[i])
            if match is None or match.group(2) != name:
                continue
            indent, text = len(match.group(1)), [match.group(3).strip()]
            for more in lines[i + 1 :]:
                if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                    break
                text.append(more.strip())
            return _plain(" ".join(text))
    return ""


def config_option(
    config: type[Config],
    name: str,
    *param_decls: str,
    default: Any = _FROM_CONFIG,
    help: str | None = None,
    why: str | None = None,
    **kwargs: Any,
) -> Any:
    """A typer option that sets field ``name`` of ``config``, with the field's default and description.

    Args:
        config: The config class the option feeds.
        name: The field.
        *param_decls: The option's names, e.g. ``"--proj-dim"``.
        default: Only where the command's default deliberately differs from the config's: a constant kept
            next to the config (``why`` says why), or ``None`` for "not set: the config (or the code that
            builds it) decides".
        help: The help text (default: the field's description, see :func:`config_field_help`).
        why: Why ``default`` differs from the config's, completing "The default here is ..."; required
            then, and shown in the help.
        **kwargs: Passed to ``typer.Option`` (``min``, ``envvar``, ...).

    Raises:
        ValueError: A default that differs from the config's without ``why`` (a mistake in a command).
    """
    library = config_default(config, name)
    value = library if default is _FROM_CONFIG else default
    text = help if help is not None else config_field_help(config, name)
    if value is None and library is not None:
        if help is None:
            text += f" Default: {library}."
    elif value != library:
        if not why:
            raise ValueError(f"--{name}: default {value!r} differs from {config.__name__}.{name}={library!r}; say why")
        text += f" The default here is {why} ({config.__name__}.{name}: {library})."
    info = typer.Option(value, *param_decls, help=text, **kwargs)
    setattr(info, CONFIG_FIELD_ATTR, (config, name))
    return info


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test runner swaps it for every command it invokes)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(verbose: bool) -> None:
    """Configure logging once, for the CLI only (the library never configures logging)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
    )


def ignore_file_size_signal() -> None:
    """Ignore SIGXFSZ, so that a write past a file-size limit (``ulimit -f``) fails with EFBIG, which
    :func:`handle_errors` reports, instead of killing the process without a word."""
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError):  # ValueError: not the main thread, where no signal can be set
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


#: Options through which commands name where they write, most specific first (``--store`` is an input of
#: commands that also have ``--out``); a failed write without a file name names the first one given.
_OUTPUT_OPTIONS = ("out", "workspace", "store")
#: errno -> (what happened, how to fix it); ``{where}`` is the output option to change, e.g. "--out".
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space or choose another {where}"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose another {where}"),
    errno.EFBIG: (
        "file too large (a file-size limit such as 'ulimit -f', or the file system's largest file)",
        "raise the limit or choose another {where}",
    ),
    errno.EROFS: ("read-only file system", "choose a writable {where}"),
    errno.EACCES: ("permission denied", "give this user access to it or choose another {where}"),
    errno.EPERM: ("operation not permitted", "give this user access to it or choose another {where}"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another {where}"),
    errno.EISDIR: ("it is a folder, not a file", "pass a file there or choose another {where}"),
    errno.EEXIST: ("it already exists", "remove it or choose another {where}"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}
_TEMP_FILE = re.compile(r"^\..+\.tmp$")  # genprov.utils.io's temporary files: name their folder instead


def _inside_any(path: str | bytes | os.PathLike[Any], folders: Iterable[Any]) -> bool:
    """Whether ``path`` is one of ``folders`` or lies inside one."""
    target = os.path.abspath(os.fsdecode(path))
    return any(
        os.path.commonpath([target, os.path.abspath(os.fsdecode(folder))]) == os.path.abspath(os.fsdecode(folder))
        for folder in folders
    )


def os_error_message(err: OSError, outputs: dict[str, Any]) -> str:
    """One line for a failed file operation: the cause at the path, and the fix.

    Args:
        err: The error (its ``filename`` names the path when the operating system gave one).
        outputs: The command's output options and their values, e.g. ``{"--out": Path("runs/x")}``; named
            when the error carries no path, and offered as what to change.
    """
    cause, fix = _OS_ERRORS.get(err.errno or -1, (err.strerror or str(err), "check the path and try again"))
    where = next(iter(outputs), "output location")
    path = err.filename if err.filename is not None else next(iter(outputs.values()), None)
    if err.errno in (errno.EACCES, errno.EPERM) and path is not None and not _inside_any(path, outputs.values()):
        fix = "give this user read access to it"  # an input: another output folder would not help
    if path is not None and _TEMP_FILE.match(os.path.basename(os.fsdecode(path))):
        path = os.path.dirname(os.fsdecode(path))
    at = f" at {os.fsdecode(path)}" if path is not None else " while writing"
    return f"{cause[0].upper()}{cause[1:]}{at}: {fix.format(where=where)}."


_ALLOCATION = re.compile(r"can't allocate memory|out of memory|tried to allocate (\d+) bytes", re.IGNORECASE)


def out_of_memory_message(err: MemoryError | RuntimeError) -> str:
    """The one-line message for a failed allocation; any other ``RuntimeError`` is re-raised (a bug, with its trace)."""
    if isinstance(err, RuntimeError) and not _ALLOCATION.search(str(err)):
        raise err
    asked = re.search(r"tried to allocate (\d+) bytes", str(err))
    size = f" (it needed {int(asked.group(1)) / 2**30:,.1f} GiB at once)" if asked else ""
    return (
        f"Out of memory{size}: the options ask for more than this machine has; lower --batch-size, --resize, "
        "--n or the model's width."
    )


def handle_errors(func: F) -> F:
    """Turn :class:`GenprovError`, file-system errors (:class:`OSError`: disk full, file-size limit,
    read-only, no permission, ...) and failed allocations into a one-line message on stderr and exit code 2
    (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GenprovError as err:
            message = str(err)
        except OSError as err:
            outputs = {f"--{k}": kwargs[k] for k in _OUTPUT_OPTIONS if kwargs.get(k) is not None}
            message = os_error_message(err, outputs)
        except (MemoryError, RuntimeError) as err:
            message = out_of_memory_message(err)
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def emit(data: Any, *, as_json: bool, title: str | None = None) -> None:
    """Print ``data`` as JSON on stdout (``as_json``) or as a readable table/summary on stderr."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if isinstance(data, list) and data and isinstance(data[0], dict):
        print_table(data, title=title)
    elif isinstance(data, dict):
        print_table([{"key": k, "value": v} for k, v in data.items()], title=title)
    else:
        console.print(data)


def print_table(rows: list[dict[str, Any]], *, title: str | None = None) -> None:
    """Print a list of dicts as a rich table on stdout."""
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    Console().print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Path):
        return str(value)
    return str(value)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``--set`` values: ``["alpha=0.001", "detector.n_epochs=10"]`` -> a nested dict (JSON values when they parse)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. --set alpha=0.001); got {pair!r}.")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError as err:
            if raw.lstrip().startswith(("[", "{", '"')):  # meant as JSON: a plain word is taken as a string
                raise ConfigError(
                    f"--set {key}: {raw!r} is not valid JSON ({err.msg} at character {err.pos + 1}); write a list "
                    'as [1, 2], a mapping as {"a": 1} and quote the whole value for the shell.'
                ) from None
            value = raw
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set key {key!r} has an empty part; write KEY or PARENT.KEY (e.g. detector.n_epochs).")
        target = values
        for depth, parent in enumerate(parts[:-1]):
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(
                    f"--set {key}: {'.'.join(parts[: depth + 1])} was already set to a value, so it has no "
                    "parameter to set inside it; pass one of the two."
                )
        target[parts[-1]] = value
    return values


def merge_dicts(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``changes``, recursing into nested dicts (for ``--set detector.n_epochs=10``)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
