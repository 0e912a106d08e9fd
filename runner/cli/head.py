"""`gridrun up` and `gridrun down`: a local Ray head kept between commands."""

from typing import Annotated

import typer
from rich.markup import escape

from runner.cli.app import app, console
from runner.cli.run import CpusOpt, GpusOpt, _check_declared
from runner.schedule import head


@app.command()
def up(gpus: GpusOpt = None, cpus: CpusOpt = None) -> None:
    """Keep a local Ray head running: later commands on this machine that name no --address use it instead
    of starting and stopping a Ray of their own, until `gridrun down`."""
    _check_declared(gpus, cpus)
    found, started = head.up(cpus, gpus)
    if not started and (cpus is not None or gpus is not None):
        console.print(
            f"[yellow]already up, with its own CPUs and GPUs: {escape(found.describe())}[/]. To change them: "
            "`gridrun down`, then `gridrun up` with them.",
            highlight=False,
        )
        return
    said = "up" if started else "already up"
    console.print(f"[green]{said}[/]: {escape(found.describe())}; `gridrun down` stops it", highlight=False)


@app.command()
def down(
    quiet: Annotated[bool, typer.Option("--quiet", help="Say nothing when no head is up.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Stop it even while commands run jobs on it.")] = False,
) -> None:
    """Stop the local Ray head `gridrun up` kept; one that runs jobs only with --force (they stop with it)."""
    stopped = head.down(force=force)
    if stopped is not None:
        console.print(f"stopped the {escape(stopped.describe())}", highlight=False)
    elif not quiet:
        console.print("no kept Ray head is up")


def register(_app: typer.Typer) -> None:
    """Commands are registered on import (they decorate the shared app)."""
