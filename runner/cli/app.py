"""The typer app and the consoles every verb prints to."""

import typer
from rich.console import Console

app = typer.Typer(
    name="gridrun",
    help="Run a study of image-model trainings on Ray and compare the runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Outside a terminal (CI, pipes, log files) rich would wrap tables at 80 columns.
console = Console(width=None if Console().is_terminal else 200)
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 200)
