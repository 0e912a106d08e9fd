"""The one exception type for a user's mistake: it carries a message that says what and how to fix."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints the message alone and exits with code 2."""

    exit_code = 2


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C is: the run stops in order and the process exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        global _stopped_by
        _stopped_by = signum


# The signal that stopped this process: a KeyboardInterrupt raised inside Ray's C++ loses its type (Ray raises a
# plain one), so readers ask here rather than look at the exception.
_stopped_by: int | None = None


def note_stop(signum: int) -> None:
    """Remember `signum` as the signal stopping this process, where it is not raised as Stopped (a search hands
    SIGTERM to Ray Tune as the SIGINT Tune stops on)."""
    global _stopped_by
    _stopped_by = signum


def stop_signal() -> int:
    """The signal that is stopping this process: SIGTERM or SIGHUP when one came, else SIGINT (Ctrl-C)."""
    import signal

    return _stopped_by or signal.SIGINT


def stop_name() -> str:
    """'Ctrl-C', 'SIGTERM' or 'SIGHUP': what stopped this process, for a job's status."""
    import signal

    return "Ctrl-C" if stop_signal() == signal.SIGINT else signal.Signals(stop_signal()).name
