"""The ``genprov`` command: one typer app with a sub-app per command group."""

from __future__ import annotations

import torch
import typer

from genprov import __version__
from genprov.cli import data as data_cmd
from genprov.cli import demo as demo_cmd
from genprov.cli import flipad as flipad_cmd
from genprov.cli import keyed as keyed_cmd
from genprov.cli import lora as lora_cmd
from genprov.cli import privacy as privacy_cmd
from genprov.cli import reproduce as reproduce_cmd
from genprov.cli import sample as sample_cmd
from genprov.cli import serve as serve_cmd
from genprov.cli import similarity as similarity_cmd
from genprov.cli import train as train_cmd
from genprov.cli import trak as trak_cmd
from genprov.cli import workspace as workspace_cmd
from genprov.cli.common import configure_logging, ignore_file_size_signal

app = typer.Typer(
    name="genprov",
    help="Provenance of generative models: which model made a sample, which training data shaped it, "
    "and what its explanations leak.\n\nStart with: genprov demo --out demo-report",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
train_cmd.app.command("lora")(lora_cmd.lora)
app.add_typer(train_cmd.app, name="train")
app.add_typer(flipad_cmd.app, name="flipad")
app.add_typer(keyed_cmd.app, name="keyed")
app.add_typer(trak_cmd.app, name="trak")
app.add_typer(similarity_cmd.app, name="similarity")
app.add_typer(privacy_cmd.app, name="privacy")
app.add_typer(workspace_cmd.app, name="workspace")
app.command("sample")(sample_cmd.sample)
app.command("explain")(privacy_cmd.explain)
app.command("demo")(demo_cmd.demo)
app.command("reproduce")(reproduce_cmd.reproduce)
app.command("serve")(serve_cmd.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress messages."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    threads: int = typer.Option(
        1,
        "--threads",
        envvar="GENPROV_THREADS",
        min=1,
        help="CPU threads for torch. 1 is fastest for genprov's small models (2 threads on a busy 2-core machine "
        "ran 30-60x slower). Env: GENPROV_THREADS.",
    ),
) -> None:
    configure_logging(verbose)
    ignore_file_size_signal()
    torch.set_num_threads(threads)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
