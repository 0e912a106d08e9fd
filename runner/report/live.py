"""The live view of a running suite: each job's state, epoch and latest accuracy.

In a terminal it is a table redrawn in place (rich); elsewhere (CI, a pipe) one line per change.
"""

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from runner.store import JobStore
from schemas import JobState

REFRESH_S = 1.0


class LiveView:
    """Reads status.json and progress.json of each job; never writes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.jobs: list[tuple[str, JobStore]] = []
        self._live: Live | None = None
        self._seen: dict[str, str] = {}
        self._started = time.monotonic()
        self._refreshed = 0.0

    def start(self, plan) -> None:
        self.jobs = [(p.spec.name, p.store) for p in plan]
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def refresh(self) -> None:
        # Each refresh reads every job's status and progress: on object storage, requests that cost.
        if time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        if self._live is not None:
            self._live.update(self._table())
            return
        for name, job in self.jobs:  # plain lines: one per state or epoch change
            line = self._line(job)
            if line and self._seen.get(name) != line:
                self._seen[name] = line
                self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {line}", highlight=False)

    def event(self, name: str, message: str) -> None:
        if self._live is None:
            self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {message}", highlight=False)
            job = dict(self.jobs).get(name)
            if job is not None:  # the state line it stands for is not printed again
                self._seen[name] = self._line(job)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    @staticmethod
    def _line(job: JobStore) -> str:
        status = job.read_status()
        if status is None:
            return ""
        progress = job.read_progress() if status.state == JobState.RUNNING else None
        if progress:
            return f"running, epoch {progress['epoch']}/{progress['epochs']}, val {progress['val_accuracy']:.1%}"
        return status.state.value

    def _table(self) -> Table:
        table = Table(title=f"gridrun — {time.monotonic() - self._started:.0f}s", title_justify="left")
        for col in ("job", "state", "epoch", "val acc", "test acc", "node / GPUs"):
            table.add_column(col)
        colours = {
            "succeeded": "green",
            "failed": "red",
            "running": "yellow",
            "cancelled": "magenta",
            "interrupted": "magenta",
        }
        for name, job in self.jobs:
            status = job.read_status()
            progress = job.read_progress() or {}
            state = status.state.value if status else "?"
            table.add_row(
                name,
                f"[{colours.get(state, 'white')}]{state}[/]",
                f"{progress['epoch']}/{progress['epochs']}" if progress else "",
                f"{progress['val_accuracy']:.1%}" if progress else "",
                f"{progress['test_accuracy']:.1%}" if progress else "",
                f"{status.node} {','.join(status.gpu_ids)}" if status else "",
            )
        return table
