"""``genprov reproduce NAME``: one paper's key experiment at small scale."""

from __future__ import annotations

from pathlib import Path

import typer

from genprov.cli.common import (
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    config_default,
    config_field_help,
    config_option,
    console,
    emit,
    handle_errors,
    parse_sets,
)
from genprov.experiments import EXPERIMENTS, run_experiment
from genprov.experiments.base import ExperimentConfig
from genprov.experiments.gnime import GNIMEExperimentConfig


@handle_errors
def reproduce(
    name: str = typer.Argument(..., help="Experiment to run (see --help for the list)."),
    data: str = config_option(ExperimentConfig, "data", "--data"),
    data_root: Path | None = DATA_ROOT_OPTION,
    seed: int = SEED_OPTION,
    quick: bool = config_option(ExperimentConfig, "quick", "--quick"),
    explainer: str | None = config_option(
        GNIMEExperimentConfig,
        "explainer",
        "--explainer",
        default=None,
        help=f"gnime only: {config_field_help(GNIMEExperimentConfig, 'explainer')} Default: "
        f"{config_default(GNIMEExperimentConfig, 'explainer')}.",
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="Override any experiment parameter: --set KEY=VALUE (JSON values)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for results.json, report.html and cached models."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run one paper's key experiment at small scale; writes OUT/results.json and OUT/report.html.

    Example: genprov reproduce flipad --data digits --seed 0 --quick --out runs/flipad
    """
    config = {"data": data, "seed": seed, "quick": quick, **parse_sets(sets)}
    if explainer is not None:
        config["explainer"] = explainer
    result = run_experiment(name, config, out, data_root=data_root)
    if as_json:
        emit(result.to_dict(), as_json=True)
    else:
        console.print(f"[green]done:[/] {out / 'results.json'} and {out / 'report.html'}")


reproduce.__doc__ = (reproduce.__doc__ or "") + f"\n\nExperiments: {', '.join(EXPERIMENTS.names()) or '(none yet)'}."
