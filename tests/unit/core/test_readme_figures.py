"""The README's measured figures are the committed ``results/*.json``, to the printed precision.

A README block ``<!-- results: results/NAME.json -->`` ... ``<!-- /results -->`` quotes one run. Its tables
are generated (``genprov.experiments.readme``) and must equal what that file renders; every other decimal
number inside it (figures in the prose; ``42.9%`` is read as 0.429) must equal, rounded to the digits
printed, some number in that file. Every README table with decimal figures is such a generated table or a
benchmark table (figures from ``benchmarks/RESULTS.md``, marked ``<!-- benchmark -->``). Every committed
results file is quoted by a block, records the command that made it, and stays small.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genprov.experiments.readme import BLOCK, TABLE, block_results, render_readme

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
RESULTS = ROOT / "results"
# A decimal number, signed or not, optionally a percentage; not part of a version string or a word.
NUMBER = re.compile(r"(?<![\w.])(?P<num>[-+]?\d*\.\d+)(?P<pct>%?)(?![.\d\w])")
MAX_BYTES = 256 * 1024


def _leaves(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _leaves(value)


def unmatched_figures(text: str, results: Any) -> list[str]:
    """The decimal numbers of ``text`` that no number of ``results`` rounds to (at the printed precision)."""
    leaves = list(_leaves(results))
    missing = []
    for match in NUMBER.finditer(text):
        printed = match.group("num")
        value = float(printed)
        tolerance = 0.5 * 10 ** -len(printed.split(".")[1]) + 1e-12
        scale = 100.0 if match.group("pct") else 1.0
        if not any(abs(leaf * scale - value) <= tolerance for leaf in leaves):
            missing.append(match.group(0))
    return missing


def _blocks() -> list[tuple[str, str]]:
    """(the results files a block quotes, its text) for every block of the README."""
    return [(m.group("paths"), m.group("body")) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_checker_reads_cells_intervals_and_percentages() -> None:
    results = {"table": [{"mse": 0.02994, "ci": [0.0276, 0.03241]}], "share": 0.4291, "diff": -0.00972}
    assert unmatched_figures("| ExpMI | 0.0299 [.0276, .0324] | 42.9% | -.0097 |", results) == []
    assert unmatched_figures("torch 2.13.0, 8x8 digits, a = 100", results) == []  # no decimals of results
    assert unmatched_figures("MSE 0.0300 and 42.8%", results) == ["0.0300", "42.8%"]  # a drifted figure fails
    assert unmatched_figures("difference +.0097", results) == ["+.0097"]  # the sign counts


def test_blocks_open_and_close() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- results:") == text.count("<!-- /results -->") == len(_blocks())
    assert text.count("<!-- table:") == text.count("<!-- /table -->")


def test_generated_tables_equal_their_results_files() -> None:
    text = README.read_text(encoding="utf-8")
    assert render_readme(text, ROOT) == text, "README tables differ from results/: python -m genprov.experiments.readme"


def test_every_table_of_figures_is_generated_or_a_benchmark() -> None:
    text = TABLE.sub("", README.read_text(encoding="utf-8"))  # generated tables are checked above
    text = re.sub(r"<!-- benchmark -->\n(\|.*\n)+", "", text)
    figures = [line for line in text.splitlines() if line.startswith("|") and NUMBER.search(line)]
    assert not figures, f"README tables of figures neither generated from results/ nor benchmarks: {figures[:3]}"


@pytest.mark.parametrize(("paths", "body"), _blocks() or [pytest.param("", "", marks=pytest.mark.skip("no blocks"))])
def test_readme_block_equals_its_results(paths: str, body: str) -> None:
    for path in paths.split():
        file = ROOT / path
        assert file.parent == RESULTS and file.is_file(), f"README quotes {path}, which is not a file under results/"
    missing = unmatched_figures(TABLE.sub("", body), block_results(paths, ROOT))
    assert not missing, f"README figures not in {paths} (at their printed precision): {missing}"


@pytest.mark.parametrize("file", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_results_file_is_small_quoted_and_reproducible(file: Path) -> None:
    assert file.stat().st_size <= MAX_BYTES, f"{file.name} is {file.stat().st_size} bytes; commit small JSON only"
    data = json.loads(file.read_text(encoding="utf-8"))
    command = data.get("provenance", {}).get("command", "")
    assert command.startswith("genprov "), f"{file.name} does not record the command that made it"
    assert {"seed", "versions"} <= set(data["provenance"]), f"{file.name} lacks the seed or the package versions"
    quoted = {path for paths, _ in _blocks() for path in paths.split()}
    assert f"results/{file.name}" in quoted, f"no README block quotes results/{file.name}"
