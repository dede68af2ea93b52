"""The ``genprov`` command: one typer app with a sub-app per command group."""

from __future__ import annotations

import typer

from genprov import __version__
from genprov.cli import data as data_cmd
from genprov.cli import demo as demo_cmd
from genprov.cli import sample as sample_cmd
from genprov.cli import train as train_cmd
from genprov.cli.common import configure_logging

app = typer.Typer(
    name="genprov",
    help="Provenance of generative models: which model made a sample, which training data shaped it, "
    "and what its explanations leak.\n\nStart with: genprov demo --out demo-report",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(train_cmd.app, name="train")
app.command("sample")(sample_cmd.sample)
app.command("demo")(demo_cmd.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress messages."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    configure_logging(verbose)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
