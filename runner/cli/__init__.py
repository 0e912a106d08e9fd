"""The gridrun command line: a thin layer over suite, plan, prepare, schedule, store and report."""

import signal
import sys

from runner.cli import head, images, models, remote, report, run
from runner.cli.app import app, err
from runner.errors import Stopped, UserError, stop_name, stop_signal
from runner.schedule import cluster as ray_cluster

__all__ = ["app", "main"]


def _stop(signum: int, _frame: object) -> None:
    # Once stopping, a second SIGTERM / SIGHUP must not cut the clean-up short.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def _interrupted() -> None:
    """The one line and exit code of a stop: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    err.print("interrupted" if stop_signal() == signal.SIGINT else f"stopped by {stop_name()}")
    sys.exit(128 + stop_signal())


def main() -> None:
    """Console entry point: a user's mistake is one message and exit code 2, never a traceback."""
    # A shell's background job starts with SIGINT ignored; gridrun must still stop cleanly on Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A `kill` or a closed terminal ends a run as Ctrl-C does: jobs cancelled in order, nothing left running.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    # Ray reads RAY_AUTH_MODE once, when it is first imported (some verbs import it early): a token given in
    # RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH turns token mode on before that.
    ray_cluster.token_mode()
    for module in (run, head, images, report, remote, models):
        module.register(app)
    try:
        # Outside standalone mode typer returns the code of typer.Exit (130 for Ctrl-C) instead of exiting.
        code = app(standalone_mode=False)
        if code == 130:
            _interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as e:
        from rich.markup import escape  # a message may hold brackets: ray[default], a path, a list

        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:  # click's usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2 if e.exit_code == 1 else e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):  # click turns KeyboardInterrupt into Abort
            _interrupted()
        raise
