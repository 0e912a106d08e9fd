"""`python -m runner` and the `gridrun` command: a stop is taken from the first instant, imports included."""

import signal
import sys


def _stopped_while_starting(signum: int, _frame: object) -> None:
    # Before the command line has loaded there is nothing to clean up; the exit code still says what stopped it
    # (130 for Ctrl-C, 143 for SIGTERM), as a stop later on does, instead of a death by signal or a traceback.
    sys.stderr.write("interrupted\n" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}\n")
    sys.exit(128 + signum)


def main() -> None:
    """Take stops at once, then load the command line (seconds of imports) and hand over to it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stopped_while_starting)
    from runner.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
