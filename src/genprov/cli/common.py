"""Shared pieces of the command-line front end: output, error handling, common options."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from genprov.exceptions import ConfigError, GenprovError

__all__ = [
    "DATA_ROOT_OPTION",
    "JSON_OPTION",
    "SEED_OPTION",
    "console",
    "emit",
    "handle_errors",
    "merge_dicts",
    "parse_sets",
    "print_table",
]

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

SEED_OPTION = typer.Option(0, "--seed", help="Seed for every random choice; the same seed gives the same numbers.")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of a table.")
DATA_ROOT_OPTION = typer.Option(
    None,
    "--data-root",
    envvar="GENPROV_DATA",
    help="Folder holding dataset files (mnist/, fashion_mnist/, cifar10_convnetjs/, faces/). Env: GENPROV_DATA.",
)


def configure_logging(verbose: bool) -> None:
    """Configure logging once, for the CLI only (the library never configures logging)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def handle_errors(func: F) -> F:
    """Turn :class:`GenprovError` into a one-line message on stderr and exit code 2 (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GenprovError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
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
        except json.JSONDecodeError:
            value = raw
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return values


def merge_dicts(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``changes``, recursing into nested dicts (for ``--set detector.n_epochs=10``)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
