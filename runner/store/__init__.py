"""The results store: where every suite and job folder lives, and the only code that knows it.

`ResultsStore.open(where)` takes a local folder, a path every node mounts, or an fsspec URL (s3://, gs://,
abfs://, file://). Job folders hold the same files on every store (see DESIGN.md, results contract):

    <root>/<suite>/suite.yaml, summary.json, report.md, report.html, plots/
    <root>/<suite>/<job>/spec.json, status.json, progress.json, result.json, log.txt, tb/, checkpoints/

A job trains in a local folder (`JobPaths`): in place when the store is a local folder, else in a working
folder on its node whose files a `Syncer` copies into the store as they are written.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.store.layout import JobPaths, SuitePaths, atomic_path, link_refusal, read_json, validated, write_json
from runner.store.storage import Storage
from runner.store.sync import Syncer
from schemas import RunResult, RunStatus, SpecFile

__all__ = [
    "DRIVER_OWNED",
    "NOT_RESUMED",
    "JobPaths",
    "JobStore",
    "ResultsStore",
    "Storage",
    "SuitePaths",
    "SuiteStore",
    "Syncer",
    "atomic_path",
    "link_refusal",
    "node_dir",
    "read_json",
    "write_json",
]

SPEC, STATUS, PROGRESS, RESULT, LOG = "spec.json", "status.json", "progress.json", "result.json", "log.txt"
# The driver and the job's task write these into the store themselves: a working folder's copy never
# overwrites them.
DRIVER_OWNED = (SPEC, STATUS)
# What a new attempt does not take from the store: it writes its own spec, status, progress and result.
NOT_RESUMED = (SPEC, STATUS, PROGRESS, RESULT)
# What a report reads of a job folder (it never needs checkpoints or events).
REPORT_FILES = (SPEC, STATUS, RESULT, PROGRESS)


def node_dir() -> Path:
    """This node's own folder for working copies of jobs and the inputs it fetched ($GRIDRUN_NODE_DIR)."""
    base = os.environ.get("GRIDRUN_NODE_DIR") or Path(tempfile.gettempdir()) / "gridrun-nodes"
    return Path(base).expanduser()


@dataclass(frozen=True)
class JobStore:
    """One job's folder in the store: results/<suite>/<job>/."""

    storage: Storage
    suite: str
    name: str

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def local(self) -> JobPaths | None:
        """The job folder as a local path, when the store is a local folder or mount."""
        return JobPaths(self.storage.local) if self.storage.local is not None else None

    def link_problem(self) -> str:
        """Why this job's folder must not be used, when a symbolic link leads it (or a file in it) out of the
        results folder; '' when none does, and always on object storage, which has no links."""
        if self.storage.local is None or self.storage.jail is None:
            return ""
        return link_refusal(self.storage.local, self.storage.jail)

    def exists(self) -> bool:
        return self.storage.exists(SPEC)

    def read_spec(self) -> SpecFile | None:
        return validated(self.storage.read_json(SPEC), SpecFile)

    def read_status(self) -> RunStatus | None:
        return validated(self.storage.read_json(STATUS), RunStatus)

    def read_result(self) -> RunResult | None:
        return validated(self.storage.read_json(RESULT), RunResult)

    def read_progress(self) -> dict[str, Any] | None:
        data = self.storage.read_json(PROGRESS)
        return data if isinstance(data, dict) else None

    def write_spec(self, spec: SpecFile) -> None:
        self.storage.write_json(SPEC, spec)

    def write_status(self, status: RunStatus) -> None:
        self.storage.write_json(STATUS, status)

    def log_text(self) -> str:
        return self.storage.read_text(LOG) or ""

    def log_url(self) -> str:
        return self.storage.path_url(LOG)

    def clear(self, *names: str) -> None:
        """Remove files or folders of the job (e.g. a stale result before a new attempt)."""
        for name in names:
            self.storage.remove(name)

    def remove(self) -> None:
        self.storage.remove("")

    def working_copy(self, work: Path) -> JobPaths:
        """A fresh local folder holding what a new attempt resumes from: checkpoints, log and events."""
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.storage.download_tree("", work, skip=NOT_RESUMED)
        return JobPaths(work)

    def syncer(self, work: Path, interval: float | None = None) -> Syncer:
        """Copies the working folder `work` into this job folder as it changes; result.json last."""
        every = interval if interval is not None else float(os.environ.get("GRIDRUN_SYNC_SECONDS", 2))
        return Syncer(work, self.storage, interval=every, last=(RESULT,), skip=DRIVER_OWNED)


@dataclass(frozen=True)
class SuiteStore:
    """One suite's folder in the store: results/<suite>/."""

    storage: Storage
    name: str

    @property
    def url(self) -> str:
        return self.storage.url

    def job(self, name: str) -> JobStore:
        return JobStore(self.storage.child(name), self.name, name)

    def jobs(self) -> list[JobStore]:
        """Job folders present (those with spec.json), by name."""
        out = []
        for name in self.storage.listdir():
            try:
                job = self.job(name)
            except ValueError:  # not a name gridrun writes: not a job folder of ours
                continue
            if job.exists():
                out.append(job)
        return out

    def exists(self) -> bool:
        return bool(self.jobs())

    def write_suite_file(self, text: str) -> None:
        self.storage.write_text("suite.yaml", text)

    def write_summary(self, data: dict[str, Any]) -> None:
        self.storage.write_json("summary.json", data)

    def read_summary(self) -> dict[str, Any] | None:
        data = self.storage.read_json("summary.json")
        return data if isinstance(data, dict) else None

    @contextmanager
    def local_copy(self, write_back: tuple[str, ...] = ()) -> Iterator[Path]:
        """A local folder with the suite's files a report reads (no checkpoints, no events); files under
        `write_back` written there are put into the store on exit. A local store is used in place."""
        if self.storage.local is not None:
            yield self.storage.local
            return
        with tempfile.TemporaryDirectory(prefix="gridrun-suite-") as tmp:
            folder = Path(tmp) / self.name
            folder.mkdir()
            for name in ("suite.yaml", "summary.json"):
                data = self.storage.read_bytes(name)
                if data is not None:
                    (folder / name).write_bytes(data)
            for job in self.jobs():
                (folder / job.name).mkdir()
                for name in REPORT_FILES:
                    data = job.storage.read_bytes(name)
                    if data is not None:
                        (folder / job.name / name).write_bytes(data)
            yield folder
            for name in write_back:
                path = folder / name
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] * path.is_file()
                for file in files:
                    self.storage.upload(file, file.relative_to(folder).as_posix())


class ResultsStore:
    """The results root: a local folder, a mount or a URL. Open it with `ResultsStore.open`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def open(cls, where: str | os.PathLike[str], create: bool = False, check: bool = True) -> "ResultsStore":
        """The store at `where`; with `check`, one clear UserError when it cannot be reached or written."""
        storage = Storage.open(where, create=create)
        if check:
            storage.check()
        return cls(storage)

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def local(self) -> Path | None:
        return self.storage.local

    def __str__(self) -> str:
        return self.storage.url

    def suite(self, name: str) -> SuiteStore:
        return SuiteStore(self.storage.child(name), name)

    def suites(self) -> list[SuiteStore]:
        out = []
        for name in self.storage.listdir():
            try:
                suite = self.suite(name)
            except ValueError:
                continue
            if suite.exists():
                out.append(suite)
        return out

    def as_suite(self) -> SuiteStore | None:
        """This location read as one suite's folder (`gridrun report s3://b/x/smoke`), when it is one."""
        suite = SuiteStore(self.storage, self.storage.name)
        return suite if suite.exists() else None

    def as_job(self) -> JobStore | None:
        """This location read as one job's folder, when it is one."""
        job = JobStore(self.storage, self.storage.parent_name, self.storage.name)
        return job if job.exists() else None


def locate(where: str | os.PathLike[str]) -> tuple[str, list[JobStore]]:
    """What `where` points at ('job', 'suite' or 'root') and its job folders; a UserError for anything else."""
    store = ResultsStore.open(where)
    if (job := store.as_job()) is not None:
        return "job", [job]
    if (suite := store.as_suite()) is not None:
        return "suite", suite.jobs()
    jobs = [j for s in store.suites() for j in s.jobs()]
    if jobs:
        return "root", jobs
    raise UserError(
        f"{store.url} holds no runs: it is not a job folder (no spec.json), nor a suite folder, nor a "
        "results folder of suites. Fix: pass results/, results/<suite> or results/<suite>/<job>."
    )


def copy_tree(source: Storage, dest: Storage, say=print) -> tuple[int, int]:
    """Copy every file under `source` to `dest` (any store to any store); (files, bytes)."""
    files = source.files("")
    done = size = 0
    with tempfile.TemporaryDirectory(prefix="gridrun-copy-") as tmp:
        for rel, nbytes in sorted(files.items()):
            if dest.local is not None:
                source.download(rel, dest.local / rel)
            else:
                staged = Path(tmp) / "file"
                source.download(rel, staged)
                dest.upload(staged, rel)
            done, size = done + 1, size + nbytes
            if done % 100 == 0:
                say(f"  {done} of {len(files)} file(s), {size / 2**20:.1f} MiB so far")
    return done, size


__all__ += ["copy_tree", "locate"]
