"""The runs a report covers: found in a suite folder, a job folder or a whole results tree, and read.

A run is whatever a job folder holds: spec.json always, status.json once scheduled, result.json
once finished. Missing or invalid files are tolerated here and shown in the report.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.store import JobStore, ResultsStore, Storage, locate
from schemas import JobSpec, RunResult, RunStatus, SpecFile, Substitution

# The lead records a job the plan refused, or one that cannot run yet, as failed with this prefix.
BLOCKED_PREFIX = "not runnable:"
# States a report lists under "failed, blocked and cancelled runs".
PROBLEM_STATES = ("failed", "blocked", "cancelled", "interrupted", "incomplete", "unreadable")


@dataclass(frozen=True)
class Run:
    """One job folder as read from disk."""

    suite: str
    job: str
    store: JobStore
    spec_file: SpecFile | None
    status: RunStatus | None
    result: RunResult | None
    problems: tuple[str, ...] = ()  # its files that are there but unusable, one line each naming the file

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.job}"

    @property
    def spec(self) -> JobSpec | None:
        """The spec as run: the result's, else the one the driver wrote."""
        if self.result is not None:
            return self.result.spec
        return self.spec_file.spec if self.spec_file is not None else None

    @property
    def substitutions(self) -> list[Substitution]:
        if self.result is not None:
            return self.result.substitutions
        return self.spec_file.substitutions if self.spec_file is not None else []

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed, skipped, cancelled, plus blocked, incomplete, unreadable (its
        status.json is there but unusable) and unknown."""
        if self.status is None:
            if self.result is not None:
                return "succeeded"
            return "unreadable" if self._problem("status.json") else "unknown"
        state = self.status.state.value
        if state == "failed" and self.status.reason.strip().lower().startswith(BLOCKED_PREFIX):
            return "blocked"
        if state == "succeeded" and self.result is None:
            return "incomplete"
        return state

    @property
    def reason(self) -> str:
        """Why the run ended as it did, or why the report cannot show its numbers."""
        reason = self.status.reason.strip() if self.status is not None else ""
        if self.state == "unreadable":
            return self._problem("status.json")
        if self.state == "incomplete":
            return "status.json says succeeded but " + (self._problem("result.json") or "result.json is missing")
        if self.spec_file is None and not reason:
            return self._problem("spec.json") or "spec.json is invalid"
        if self.state in ("failed", "cancelled", "interrupted") and not reason:
            return "no reason recorded"
        return reason

    def _problem(self, name: str) -> str:
        return next((p for p in self.problems if p.startswith(f"{name} ")), "")

    @property
    def log(self) -> str:
        """The run's log: a local path, or a URL on object storage."""
        name = self.status.log if self.status is not None else "log.txt"
        local = self.store.local
        return str(local.dir / name) if local is not None else self.store.storage.path_url(name)


def read_run(job: JobStore) -> Run:
    """Read one job folder, named by its folders: a copy of results/<suite> kept as results/<suite>-old
    is told apart from the original."""
    files = job.read_files()
    # A job its dead driver left "running" is shown as interrupted, as `status` shows it.
    return Run(job.suite, job.name, job, files.spec, job.seen(files.status), files.result, files.problems)


def load_suite(suite_dir: Path | str) -> list[Run]:
    """Every run of one suite folder, by job name; a clear error for anything else."""
    store = ResultsStore.open(suite_dir)
    suite = store.as_suite()
    if suite is not None:
        return [read_run(j) for j in suite.jobs()]
    where = store.url
    if store.as_job() is not None:
        parent = os.path.dirname(where.rstrip("/"))
        raise UserError(
            f"{where} is the folder of one job, not of a suite. Fix: `gridrun report {parent}` "
            f"for its whole suite, or `gridrun compare {where}` for this run alone."
        )
    suites = store.suites()
    if suites:
        names = ", ".join(s.name for s in suites[:5]) + (", ..." if len(suites) > 5 else "")
        raise UserError(
            f"{where} holds whole suites ({names}), not the jobs of one suite. "
            f"Fix: `gridrun report {suites[0].url}` for one suite, or `gridrun compare {where}` for all of them."
        )
    raise UserError(
        f"{where} is not a suite results folder: it holds no job folder (a folder with spec.json). "
        "Fix: pass results/<suite> as written by `gridrun run jobs/<suite>.yaml`."
    )


def collect(paths: list[Path | str]) -> list[Run]:
    """The runs of each path or URL given: a job folder, a suite folder or a results tree of suites.

    The same job folder named twice is read once; the order is that of the arguments.
    """
    if not paths:
        raise UserError("no folder given. Fix: name a results folder, a suite folder or a job folder.")
    runs: dict[str, Run] = {}
    for where in paths:
        _, jobs = locate(where)
        for job in jobs:
            runs.setdefault(job.storage.key, read_run(job))
    return list(runs.values())


__all__ = ["Run", "Storage", "collect", "load_suite", "read_run"]
