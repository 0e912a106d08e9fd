"""The runs a report covers: found in a suite folder, a job folder or a whole results tree, and read.

A run is whatever a job folder holds: spec.json always, status.json once scheduled, result.json
once finished. Missing or invalid files are tolerated here and shown in the report.
"""

from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.store.layout import JobPaths, SuitePaths
from schemas import JobSpec, RunResult, RunStatus, SpecFile, Substitution

# The lead records a job the plan refused, or one that cannot run yet, as failed with this prefix.
BLOCKED_PREFIX = "not runnable:"
# States a report lists under "failed, blocked and cancelled runs".
PROBLEM_STATES = ("failed", "blocked", "cancelled", "incomplete")


@dataclass(frozen=True)
class Run:
    """One job folder as read from disk."""

    suite: str
    job: str
    paths: JobPaths
    spec_file: SpecFile | None
    status: RunStatus | None
    result: RunResult | None

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
        """queued, running, succeeded, failed, skipped, cancelled, plus blocked, incomplete and unknown."""
        if self.status is None:
            return "succeeded" if self.result is not None else "unknown"
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
        if self.state == "incomplete":
            return f"status.json says succeeded but {self.paths.result.name} is missing or invalid"
        if self.spec_file is None and not reason:
            return f"{self.paths.spec.name} is invalid"
        if self.state in ("failed", "cancelled") and not reason:
            return "no reason recorded"
        return reason

    @property
    def log(self) -> Path:
        return self.paths.dir / (self.status.log if self.status is not None else self.paths.log.name)


def read_run(paths: JobPaths) -> Run:
    """Read one job folder, named by its folders: a copy of results/<suite> kept as results/<suite>-old
    is told apart from the original."""
    return Run(
        paths.dir.parent.name, paths.dir.name, paths, paths.read_spec(), paths.read_status(), paths.read_result()
    )


def _is_job(folder: Path) -> bool:
    return (folder / "spec.json").is_file()


def _suites_under(folder: Path) -> list[Path]:
    """Sub-folders that are suite folders (hold at least one job folder)."""
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and SuitePaths(p).jobs()]


def load_suite(suite_dir: Path) -> list[Run]:
    """Every run of one suite folder, by job name; a clear error for anything else."""
    suite_dir = Path(suite_dir)
    _must_be_dir(suite_dir, "a suite results folder such as results/<suite>")
    jobs = SuitePaths(suite_dir).jobs()
    if jobs:
        return [read_run(j) for j in jobs]
    if _is_job(suite_dir):
        raise UserError(
            f"{suite_dir} is the folder of one job, not of a suite. Fix: `gridrun report {suite_dir.parent}` "
            f"for its whole suite, or `gridrun compare {suite_dir}` for this run alone."
        )
    suites = _suites_under(suite_dir)
    if suites:
        names = ", ".join(p.name for p in suites[:5]) + (", ..." if len(suites) > 5 else "")
        raise UserError(
            f"{suite_dir} holds whole suites ({names}), not the jobs of one suite. "
            f"Fix: `gridrun report {suites[0]}` for one suite, or `gridrun compare {suite_dir}` for all of them."
        )
    raise UserError(
        f"{suite_dir} is not a suite results folder: it holds no job folder (a folder with spec.json). "
        "Fix: pass results/<suite> as written by `gridrun run jobs/<suite>.yaml`."
    )


def collect(paths: list[Path]) -> list[Run]:
    """The runs of each path given: a job folder, a suite folder or a results tree of suites.

    The same job folder named twice is read once; the order is that of the arguments.
    """
    if not paths:
        raise UserError("no folder given. Fix: name a results folder, a suite folder or a job folder.")
    runs: dict[Path, Run] = {}
    for path in map(Path, paths):
        _must_be_dir(path, "a results, suite or job folder")
        if _is_job(path):
            found = [JobPaths(path)]
        elif jobs := SuitePaths(path).jobs():
            found = jobs
        elif suites := _suites_under(path):
            found = [j for s in suites for j in SuitePaths(s).jobs()]
        else:
            raise UserError(
                f"{path} holds no runs: it is not a job folder (no spec.json), nor a suite folder, nor a "
                "results folder of suites. Fix: pass results/, results/<suite> or results/<suite>/<job>."
            )
        for job in found:
            runs.setdefault(job.dir.resolve(), read_run(job))
    return list(runs.values())


def _must_be_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{path} does not exist. Fix: pass {what}, made by `gridrun run`.")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder. Fix: pass {what}.")
