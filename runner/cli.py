"""The gridrun command line."""

import signal
import sys

import typer
from rich.console import Console

from runner.errors import UserError

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

# Commands of other modules register themselves here: each module has register(app).
COMMAND_MODULES: list[str] = ["runner.commands", "runner.images_cli", "runner.report_cli", "runner.remote_cli"]


def main() -> None:
    """Console entry point: a user's mistake is one message and exit code 2, never a traceback."""
    from importlib import import_module

    # A shell's background job starts with SIGINT ignored; gridrun must still stop cleanly on Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for module in COMMAND_MODULES:
        import_module(module).register(app)
    try:
        # Outside standalone mode typer returns the code of typer.Exit (130 for Ctrl-C) instead of exiting.
        code = app(standalone_mode=False)
        if code == 130:
            err.print("interrupted")
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as e:
        from rich.markup import escape  # a message may hold brackets: ray[default], a path, a list

        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2 if e.exit_code == 1 else e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
