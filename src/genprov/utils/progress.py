"""The one progress helper: every long loop in genprov reports through :func:`progress`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(show: bool | None = None) -> bool:
    """Whether to draw progress bars: ``show`` if given, else off when ``GENPROV_PROGRESS=0`` or stderr is no TTY."""
    if show is not None:
        return show
    env = os.environ.get("GENPROV_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, show: bool | None = None) -> Iterator[T]:
    """Iterate ``iterable`` with a progress bar labelled ``desc`` (see :func:`progress_enabled`)."""
    yield from tqdm(
        iterable, desc=desc, total=total, disable=not progress_enabled(show), leave=False, dynamic_ncols=True
    )
