"""The live view of a running suite: each job's state, epoch and latest accuracy; a search's trials by state.

In a terminal it is a table redrawn in place (rich); elsewhere (CI, a pipe) one line per change.
"""

import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from runner.store import JobStore, SearchStore
from schemas import JobState, SearchSpec

REFRESH_S = 1.0
_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "cancelled": "magenta",
    "interrupted": "magenta",
    "stopped": "cyan",
}


def state_line(job: JobStore) -> str:
    """'running, epoch 2/4, val 81.3%', or the job's state."""
    status = job.read_status()
    if status is None:
        return ""
    progress = job.read_progress() if status.state == JobState.RUNNING else None
    if progress:
        return f"running, epoch {progress['epoch']}/{progress['epochs']}, val {progress['val_accuracy']:.1%}"
    return status.state.value


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
            line = state_line(job)
            if line and self._seen.get(name) != line:
                self._seen[name] = line
                self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {line}", highlight=False)

    def event(self, name: str, message: str) -> None:
        if self._live is None:
            self.console.print(f"[{time.monotonic() - self._started:6.0f}s] {name}: {message}", highlight=False)
            job = dict(self.jobs).get(name)
            if job is not None:  # the state line it stands for is not printed again
                self._seen[name] = state_line(job)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    def _table(self) -> Table:
        table = Table(title=f"gridrun — {time.monotonic() - self._started:.0f}s", title_justify="left")
        for col in ("job", "state", "epoch", "val acc", "test acc", "node / GPUs"):
            table.add_column(col)
        for name, job in self.jobs:
            status = job.read_status()
            progress = job.read_progress() or {}
            state = status.state.value if status else "?"
            table.add_row(
                name,
                f"[{_COLOURS.get(state, 'white')}]{state}[/]",
                f"{progress['epoch']}/{progress['epochs']}" if progress else "",
                f"{progress['val_accuracy']:.1%}" if progress else "",
                f"{progress['test_accuracy']:.1%}" if progress else "",
                f"{status.node} {','.join(status.gpu_ids)}" if status else "",
            )
        return table


class SearchView:
    """The live view of a search: its trials by state, the best so far, and each running trial's epoch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.store: SearchStore | None = None
        self.spec: SearchSpec | None = None
        self.epochs = 0
        self._live: Live | None = None
        self._seen: dict[str, str] = {}
        self._started = time.monotonic()
        self._refreshed = 0.0

    def start(self, store: SearchStore, spec: SearchSpec, epochs: int) -> None:
        self.store, self.spec, self.epochs = store, spec, epochs
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._started:6.0f}s]"

    def refresh(self) -> None:
        if self.store is None or time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        if self._live is not None:
            self._live.update(self._table())
            return
        for job in self.store.trials():
            line = state_line(job)
            if line and self._seen.get(job.name) != line:
                self._seen[job.name] = line
                self.console.print(f"{self._stamp()} {job.name}: {line}", highlight=False)
        summary = self.summary()
        if summary and self._seen.get("") != summary:
            self._seen[""] = summary
            self.console.print(f"{self._stamp()} search {self.store.name}: {summary}", highlight=False)

    def event(self, name: str, message: str) -> None:
        if self._live is None:
            self.console.print(f"{self._stamp()} {name}: {message}", highlight=False)
            if self.store is not None and name != self.store.name:
                self._seen[name] = state_line(self.store.trial(name))

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    def _best(self) -> tuple[str, float] | None:
        """The trial with the best metric at its latest epoch, and that value."""
        assert self.store is not None and self.spec is not None
        metric, best = self.spec.metric, None
        for job in self.store.trials():
            progress = job.read_progress() or {}
            value = progress.get(metric.name)
            if isinstance(value, int | float) and (best is None or metric.better(value, best[1])):
                best = (job.name, float(value))
        return best

    def summary(self) -> str:
        """'3 running, 2 succeeded, 4 stopped early of 9; best so far small-dense-04 val_accuracy 0.93 (epoch 3)'."""
        if self.store is None or self.spec is None:
            return ""
        states = Counter((s.state.value if (s := job.read_status()) else "?") for job in self.store.trials())
        if not states:
            return ""
        counts = ", ".join(f"{n} {'stopped early' if state == 'stopped' else state}" for state, n in states.items())
        best = self._best()
        shown = f"; best so far {best[0]}: {self.spec.metric.name} {best[1]:.4g}" if best else ""
        return f"{counts} of {self.spec.trials}{shown}"

    def _table(self) -> Table:
        title = f"gridrun — search {self.store.name if self.store else ''} — {time.monotonic() - self._started:.0f}s"
        table = Table(title=title, title_justify="left", caption=self.summary(), caption_justify="left")
        for col in ("trial", "state", "epoch", "val acc", "values"):
            table.add_column(col)
        for job in self.store.trials() if self.store is not None else []:
            status = job.read_status()
            progress = job.read_progress() or {}
            spec = job.read_spec()
            values = spec.trial.values if spec is not None and spec.trial is not None else {}
            shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in values.items())
            state = status.state.value if status else "?"
            table.add_row(
                job.name,
                f"[{_COLOURS.get(state, 'white')}]{state}[/]",
                f"{progress['epoch']}/{progress['epochs']}" if progress else "",
                f"{progress['val_accuracy']:.1%}" if progress else "",
                shown,
            )
        return table


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
