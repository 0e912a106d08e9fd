"""The live view of a running suite: each job's state, epoch and latest accuracy.

In a terminal it is a table redrawn in place (rich); elsewhere (CI, a pipe) one line per change.
"""

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from runner.store.layout import JobPaths, read_json
from schemas import JobState


class LiveView:
    """Reads status.json and progress.json of each job; never writes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.jobs: list[tuple[str, JobPaths]] = []
        self._live: Live | None = None
        self._seen: dict[str, str] = {}
        self._started = time.monotonic()

    def start(self, plan) -> None:
        self.jobs = [(p.spec.name, p.paths) for p in plan]
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            return
        for name, paths in self.jobs:  # plain lines: one per state or epoch change
            line = self._line(paths)
            if line and self._seen.get(name) != line:
                self._seen[name] = line
                self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {line}", highlight=False)

    def event(self, name: str, message: str) -> None:
        if self._live is None:
            self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {message}", highlight=False)
            paths = dict(self.jobs).get(name)
            if paths is not None:  # the state line it stands for is not printed again
                self._seen[name] = self._line(paths)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    @staticmethod
    def _line(paths: JobPaths) -> str:
        status = paths.read_status()
        if status is None:
            return ""
        progress = read_json(paths.progress) if status.state == JobState.RUNNING else None
        if progress:
            return f"running, epoch {progress['epoch']}/{progress['epochs']}, val {progress['val_accuracy']:.1%}"
        return status.state.value

    def _table(self) -> Table:
        table = Table(title=f"gridrun — {time.monotonic() - self._started:.0f}s", title_justify="left")
        for col in ("job", "state", "epoch", "val acc", "test acc", "node / GPUs"):
            table.add_column(col)
        colours = {"succeeded": "green", "failed": "red", "running": "yellow", "cancelled": "magenta"}
        for name, paths in self.jobs:
            status = paths.read_status()
            progress = read_json(paths.progress) or {}
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
