"""The typer app and the consoles every verb prints to."""

import os

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="gridrun",
    help="Run a study of image-model trainings on Ray and compare the runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _width(probe: Console) -> int | None:
    """A terminal's own width, or COLUMNS where set; else 200, as rich would wrap tables at 80 columns in pipes."""
    return None if probe.is_terminal or os.environ.get("COLUMNS", "").isdigit() else 200


console = Console(width=_width(Console()))
err = Console(stderr=True, width=_width(Console(stderr=True)))


def note(message: str) -> None:
    """A side remark a command makes on its way (a library missing, a kept head gone), in yellow."""
    console.print(f"[yellow]note: {escape(message)}[/]", highlight=False)
