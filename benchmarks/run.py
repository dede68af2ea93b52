"""Run every benchmark module (``benchmarks/bench_*.py``) and append its results to ``benchmarks/RESULTS.md``.

Each module defines ``run(quick: bool) -> str``, returning a Markdown section (a heading, a table with
genprov and the peer measured in the same run, and the ratio). Every timing follows :mod:`benchmarks.timing`:
a warm-up, at least three interleaved repetitions per method, median [min-max], ratios of medians, and the
load average before and after each table (flagged when it moved by more than 0.5). This script adds the
date, the machine and the command, and appends atomically. ``--quick`` runs are smoke tests, not results.

Usage:
    python -m benchmarks.run [--only NAME[,NAME]] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
from pathlib import Path

import torch

from genprov.utils.io import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def _modules(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in only}
        missing = wanted - set(names)
        if missing:
            sys.exit(f"unknown benchmark(s): {', '.join(sorted(missing))}; available: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    return names


def main(argv: list[str] | None = None) -> None:
    """Run the selected benchmarks and append their sections to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (e.g. flipad)")
    parser.add_argument("--quick", action="store_true", help="smaller problems (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("GENPROV_BENCH_THREADS", "1")))
    command = (
        "python -m benchmarks.run" + (f" --only {args.only}" if args.only else "") + (" --quick" if args.quick else "")
    )
    header = (
        f"\n## Run of {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command}` (via `make bench`). Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s). 1-minute load average at the start: "
        f"{os.getloadavg()[0]:.1f}. Cells are median [min-max] of interleaved repetitions, ratios are ratios of "
        "medians; a table whose load moved by more than 0.5 while it ran is flagged and is not a result.\n"
    )
    sections = [header]
    for name in _modules(args.only.split(",") if args.only else None):
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", flush=True)
        section = module.run(quick=args.quick) + f"\nLoad average at the end of {name}: {os.getloadavg()[0]:.1f}.\n"
        print(section, flush=True)
        sections.append(section)
    previous = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    atomic_write_text(RESULTS, previous.rstrip("\n") + "\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
