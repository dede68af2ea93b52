"""The timing protocol every benchmark table follows (issue 19, "Benchmarks that hold").

Each timed method of a table is first called once as a warm-up (not timed into the table), then the methods
are called in interleaved rounds, ``A B C A B C ...``, at least :data:`MIN_REPEATS` times each, so a change of
the machine's load during the table touches every method alike instead of one. A table reports, per method,
the **median** of its repetitions and their **range** (min-max), ratios as **ratios of medians**, and the
1-minute load average read before the first warm-up and at the end of every round; :func:`load_note` flags a
table whose load changed by more than :data:`LOAD_TOLERANCE` while it ran. With the round readings the flag
compares them with one another, not with the reading before the first call: that one does not yet count the
table's own work (one process: about one unit on this machine, which the 1-minute average takes a minute to
show), so comparing it with the end would flag every table started on an idle machine and miss nothing
the rounds do not show.

Methods that must run in their own process (clean peak-memory readings) are interleaved the same way: each
call of the method spawns one process (see :func:`in_child`), which times its own work after its own
in-process warm-up and returns the seconds in its output (``Trials.timing(name, key=...)`` reads them).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "LOAD_TOLERANCE",
    "MAX_LISTED_ROUNDS",
    "MIN_REPEATS",
    "Timing",
    "Trials",
    "in_child",
    "interleaved",
    "load_average",
    "load_note",
]

#: The fewest timed repetitions of each method in a table.
MIN_REPEATS = 3
#: A table whose 1-minute load average moved by more than this while it ran is flagged.
LOAD_TOLERANCE = 0.5

R = TypeVar("R")


def load_average() -> float:
    """The 1-minute load average of the machine (``os.getloadavg``)."""
    return os.getloadavg()[0]


#: Round readings listed one by one under a table; more are summarised as their range.
MAX_LISTED_ROUNDS = 12


def load_note(before: float, after: float, rounds: tuple[float, ...] = ()) -> str:
    """One sentence for under a table: the load before and after it, flagged if it moved by more than 0.5.

    Args:
        before: 1-minute load average read before the table's first call.
        after: 1-minute load average read after its last call.
        rounds: The readings at the end of each interleaved round (the last is ``after``); when given, the flag
            is on their spread (see the module docstring).
    """
    note = f"1-minute load average {before:.1f} before this table, {after:.1f} after"
    if rounds:
        if len(rounds) <= MAX_LISTED_ROUNDS:
            note += f" ({', '.join(f'{r:.1f}' for r in rounds)} at the end of each round)"
        else:
            note += f" ({min(rounds):.1f}-{max(rounds):.1f} at the end of each of {len(rounds)} rounds)"
        moved = max(rounds) - min(rounds)
    else:
        moved = abs(after - before)
    note += "."
    if moved > LOAD_TOLERANCE:
        note += (
            f" **Load changed by more than {LOAD_TOLERANCE} during this table: its timings are not the product's "
            "speed; rerun it on a quiet machine.**"
        )
    return note


@dataclass(frozen=True)
class Timing:
    """The repetitions of one method (seconds per example or per call): median and range."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median(self) -> float:
        """Median of the repetitions."""
        return float(statistics.median(self.samples))

    @property
    def low(self) -> float:
        """Fastest repetition."""
        return min(self.samples)

    @property
    def high(self) -> float:
        """Slowest repetition."""
        return max(self.samples)

    def scaled(self, factor: float) -> Timing:
        """The same repetitions multiplied by ``factor`` (e.g. 1000 for milliseconds, ``1 / n`` per example)."""
        return Timing(tuple(s * factor for s in self.samples))

    def cell(self, spec: str = ".3f") -> str:
        """``median [min-max]`` formatted with ``spec`` (a table cell)."""
        return f"{self.median:{spec}} [{self.low:{spec}}-{self.high:{spec}}]"

    def ratio(self, other: Timing) -> float:
        """Ratio of medians, ``self / other`` (how many times ``other``'s time this one takes)."""
        return self.median / other.median


@dataclass
class Trials(Generic[R]):
    """What :func:`interleaved` returns: every call's output and wall seconds, the call order and the load."""

    outputs: dict[str, list[R]]
    seconds: dict[str, list[float]]
    warm_up_seconds: dict[str, float]
    order: list[str]
    load_before: float
    repeats: int = field(default=MIN_REPEATS)
    load_rounds: list[float] = field(default_factory=list)

    @property
    def load_after(self) -> float:
        """The 1-minute load average after the last round."""
        return self.load_rounds[-1]

    def timing(self, name: str, *, per: float = 1.0, key: str | int | None = None) -> Timing:
        """Timing of ``name``: its wall seconds per call divided by ``per`` (e.g. the examples of a call).

        With ``key``, the seconds are read from each output instead (``output[key]``: the method timed its own
        work, e.g. inside a spawned process, excluding its set-up), then divided by ``per``.
        """
        values = [out[key] for out in self.outputs[name]] if key is not None else self.seconds[name]  # type: ignore[index]
        return Timing(tuple(float(v) / per for v in values))

    def last(self, name: str) -> R:
        """The output of the last repetition of ``name``."""
        return self.outputs[name][-1]

    def note(self) -> str:
        """:func:`load_note` of this table, with how it was timed."""
        warm = "one warm-up call" if self.warm_up_seconds else "a warm-up before the timed part of each run"
        return (
            f"Each method: {warm}, then {self.repeats} interleaved runs (A B C A B C ...); cells are median "
            f"[min-max], ratios are ratios of medians. "
            f"{load_note(self.load_before, self.load_after, tuple(self.load_rounds))}"
        )


def interleaved(
    methods: Mapping[str, Callable[[int], R]],
    *,
    repeats: int = MIN_REPEATS,
    warm_up: bool | Mapping[str, Callable[[], object]] = True,
    clock: Callable[[], float] = time.perf_counter,
    load: Callable[[], float] = load_average,
) -> Trials[R]:
    """Call every method once as a warm-up, then ``repeats`` rounds of all methods in order (A B C A B C ...).

    Args:
        methods: Name -> callable taking the repetition index (0-based; the warm-up gets 0).
        repeats: Timed calls of each method (at least :data:`MIN_REPEATS`).
        warm_up: ``True``: each method's own call (index 0) is its warm-up; a mapping gives a cheaper warm-up
            for some methods (the others warm up with their own call); ``False``: no warm-up here (each call
            warms up on its own, as a spawned process must, or it happened before).
        clock: Seconds (injected by tests).
        load: The load average reading (injected by tests).

    Returns:
        The outputs and wall seconds of the timed calls (warm-ups apart), in :class:`Trials`.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats={repeats}: the protocol times each method at least {MIN_REPEATS} times")
    trials: Trials[R] = Trials({n: [] for n in methods}, {n: [] for n in methods}, {}, [], load(), repeats)
    if warm_up is not False:
        cheaper = warm_up if isinstance(warm_up, Mapping) else {}
        for name, method in methods.items():
            start = clock()
            if name in cheaper:
                cheaper[name]()
            else:
                method(0)
            trials.warm_up_seconds[name] = clock() - start
    for index in range(repeats):
        for name, method in methods.items():
            trials.order.append(name)
            start = clock()
            out = method(index)
            trials.seconds[name].append(clock() - start)
            trials.outputs[name].append(out)
        trials.load_rounds.append(load())
    return trials


def in_child(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a fresh spawned process (its own memory peaks), returning its result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def spawned_trials(
    measure: Callable[..., Mapping[str, Any]], names: list[str], *args: Any
) -> tuple[Trials[Mapping[str, Any]], dict[str, Mapping[str, Any]], dict[str, Timing]]:
    """:func:`interleaved` runs of ``measure(name, *args)`` for every name, each in its own spawned process (so each
    run warms up on its own and its peaks are its own).

    Returns:
        The trials, each name's last output, and the :class:`Timing` of every name whose output has no ``"error"``
        (from its own ``"seconds_per_example"``).
    """
    trials = interleaved({m: lambda _, m=m: in_child(measure, m, *args) for m in names}, warm_up=False)
    results = {m: trials.last(m) for m in names}
    times = {m: trials.timing(m, key="seconds_per_example") for m in names if "error" not in results[m]}
    return trials, results, times
