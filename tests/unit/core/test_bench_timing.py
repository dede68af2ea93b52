"""The benchmarks' timing protocol (``benchmarks/timing.py``): interleaved order, median and range, load flag."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _timing_module() -> ModuleType:
    """``benchmarks.timing`` loaded from its file (the repository root is not on pytest's path)."""
    spec = importlib.util.spec_from_file_location("bench_timing_under_test", ROOT / "benchmarks" / "timing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


timing = _timing_module()


class FakeClock:
    """A clock that only moves when a method ``spends`` time: deterministic seconds per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def _methods(
    clock: FakeClock, calls: list[str], costs: dict[str, list[float]]
) -> dict[str, Callable[[int], tuple[str, int]]]:
    """Methods that log their calls and spend the next of their costs (warm-up first)."""

    def method(name: str) -> Callable[[int], tuple[str, int]]:
        def call(index: int) -> tuple[str, int]:
            calls.append(name)
            clock.spend(costs[name].pop(0))
            return name, index

        return call

    return {name: method(name) for name in costs}


def test_methods_run_interleaved_after_one_warm_up_each() -> None:
    clock, calls = FakeClock(), list[str]()
    costs = {"a": [9.0, 1.0, 2.0, 3.0], "b": [9.0, 4.0, 5.0, 6.0], "c": [9.0, 7.0, 8.0, 9.0]}
    trials = timing.interleaved(_methods(clock, calls, costs), repeats=3, clock=clock, load=lambda: 1.0)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3
    assert trials.order == ["a", "b", "c"] * 3
    assert trials.warm_up_seconds == {"a": 9.0, "b": 9.0, "c": 9.0}
    assert trials.seconds["a"] == [1.0, 2.0, 3.0]  # warm-up not among the timed calls
    assert trials.outputs["b"] == [("b", 0), ("b", 1), ("b", 2)]
    assert trials.last("c") == ("c", 2)


def test_cheaper_warm_up_and_no_warm_up() -> None:
    clock, calls = FakeClock(), list[str]()
    costs = {"a": [1.0] * 3, "b": [1.0] * 4}
    warmed: list[str] = []
    timing.interleaved(
        _methods(clock, calls, costs), warm_up={"a": lambda: warmed.append("a")}, clock=clock, load=lambda: 0.0
    )
    assert warmed == ["a"] and calls == ["b"] + ["a", "b"] * 3  # "a" got its cheaper warm-up, "b" its own call
    clock, calls = FakeClock(), list[str]()
    costs = {"a": [1.0] * 3, "b": [1.0] * 3}
    trials = timing.interleaved(_methods(clock, calls, costs), warm_up=False, clock=clock, load=lambda: 0.0)
    assert calls == ["a", "b"] * 3 and trials.warm_up_seconds == {}


def test_fewer_than_three_repeats_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        timing.interleaved({"a": lambda i: i}, repeats=2)


def test_median_range_and_ratio_of_medians_with_a_fake_clock() -> None:
    clock, calls = FakeClock(), list[str]()
    costs = {"fast": [0.0, 2.0, 10.0, 4.0, 3.0], "slow": [0.0, 8.0, 6.0, 30.0, 7.0]}
    trials = timing.interleaved(_methods(clock, calls, costs), repeats=4, clock=clock, load=lambda: 1.0)
    fast = trials.timing("fast", per=2)  # two examples per call
    assert fast.samples == (1.0, 5.0, 2.0, 1.5)
    assert (fast.median, fast.low, fast.high) == (1.75, 1.0, 5.0)
    slow = trials.timing("slow", per=2)
    assert slow.median == 3.75  # (3.5 + 4) / 2: an outlier (15) does not move it
    assert slow.ratio(fast) == pytest.approx(3.75 / 1.75)
    assert fast.cell(".2f") == "1.75 [1.00-5.00]"
    assert fast.scaled(1000).cell(".0f") == "1750 [1000-5000]"


def test_timing_from_the_outputs() -> None:
    seconds = iter([0.5, 0.1, 0.3, 0.2])  # the warm-up's, then three runs (as a spawned process reports)
    trials = timing.interleaved({"child": lambda i: {"s": next(seconds)}}, load=lambda: 1.0)
    t = trials.timing("child", key="s", per=0.1)
    assert t.samples == pytest.approx((1.0, 3.0, 2.0)) and t.median == pytest.approx(2.0)


def test_load_is_read_before_and_after_every_round_and_flagged_above_half() -> None:
    # the table's own work raises the load from 1.0 to 2.0 by the end of the first round: not a change
    readings = iter([1.0, 2.0, 2.1, 2.0])
    trials = timing.interleaved({"a": lambda i: i}, load=lambda: next(readings))
    assert (trials.load_before, trials.load_after, trials.load_rounds) == (1.0, 2.0, [2.0, 2.1, 2.0])
    assert "(2.0, 2.1, 2.0 at the end of each round)" in trials.note() and "Load changed" not in trials.note()
    # another job ending during the rounds is flagged
    readings = iter([1.0, 2.0, 1.6, 1.4])
    trials = timing.interleaved({"a": lambda i: i}, load=lambda: next(readings))
    assert "Load changed by more than 0.5" in trials.note()
    assert "Load changed" not in timing.load_note(1.0, 1.5)
    many = timing.load_note(2.0, 2.1, (2.0,) * 29 + (2.1,))
    assert "(2.0-2.1 at the end of each of 30 rounds)" in many and "Load changed" not in many
    assert "Load changed" in timing.load_note(2.0, 2.1, (2.0,) * 29 + (2.6,))
    assert "Load changed" in timing.load_note(4.1, 0.9)  # a falling load is flagged too
    assert timing.load_note(1.0, 1.2).startswith("1-minute load average 1.0 before this table, 1.2 after.")


def test_an_empty_timing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        timing.Timing(())
