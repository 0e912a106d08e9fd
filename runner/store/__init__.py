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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from runner.errors import UserError
from runner.store.layout import (
    BAD_FILE_FIX,
    JobPaths,
    SuitePaths,
    atomic_path,
    link_refusal,
    parse_model,
    read_json,
    write_json,
)
from runner.store.lock import SuiteLock, holder_of
from runner.store.storage import Storage
from runner.store.sync import Syncer
from schemas import JobState, Owner, RunResult, RunStatus, SpecFile

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "BAD_FILE_FIX",
    "DRIVER_OWNED",
    "NOT_RESUMED",
    "JobFiles",
    "JobPaths",
    "JobStore",
    "ResultsStore",
    "SearchStore",
    "Storage",
    "SuiteLock",
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
# Earlier finished results of a job whose spec changed (or that was forced): <suite>/_previous/<job>-<hash>.
PREVIOUS = "_previous"
_UNKNOWN = object()


def node_dir() -> Path:
    """This node's own folder for working copies of jobs and the inputs it fetched ($GRIDRUN_NODE_DIR)."""
    base = os.environ.get("GRIDRUN_NODE_DIR") or Path(tempfile.gettempdir()) / "gridrun-nodes"
    return Path(base).expanduser()


@dataclass(frozen=True)
class JobFiles:
    """A job folder's JSON files, each read once: validated, or None when missing or unusable."""

    spec: SpecFile | None
    status: RunStatus | None
    result: RunResult | None
    problems: tuple[str, ...] = ()  # one line for each file that is there but unusable, naming it

    def problem_of(self, name: str) -> str:
        """What is wrong with the file `name` (spec.json, status.json, result.json), or ''."""
        return next((p for p in self.problems if p.startswith(f"{name} ")), "")


@dataclass(frozen=True)
class JobStore:
    """One job's folder in the store: results/<suite>/<job>/, or a search's trial: results/<suite>/<search>/<trial>/."""

    storage: Storage
    suite: str
    name: str
    search: str = ""  # the search a trial belongs to; '' for a job of the suite

    @property
    def label(self) -> str:
        """Where it is in its suite: <job>, or <search>/<trial>."""
        return f"{self.search}/{self.name}" if self.search else self.name

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

    def read_checked(self, name: str, model: type[M]) -> tuple[M | None, str]:
        """The file `name` validated as `model`, and what is wrong with it when it is there but unusable."""
        try:
            raw = self.storage.read_bytes(name)
        except OSError as e:  # unreadable: a problem of that file, not of the whole listing
            return None, f"{name} cannot be read ({e.strerror or e})"
        return parse_model(raw, model, name)

    def read_spec(self) -> SpecFile | None:
        return self.read_checked(SPEC, SpecFile)[0]

    def read_status(self) -> RunStatus | None:
        return self.read_checked(STATUS, RunStatus)[0]

    def read_result(self) -> RunResult | None:
        return self.read_checked(RESULT, RunResult)[0]

    def read_files(self) -> JobFiles:
        """spec.json, status.json and result.json, with a line for each one that is there but unusable."""
        spec, bad_spec = self.read_checked(SPEC, SpecFile)
        status, bad_status = self.read_checked(STATUS, RunStatus)
        result, bad_result = self.read_checked(RESULT, RunResult)
        return JobFiles(spec, status, result, tuple(p for p in (bad_spec, bad_status, bad_result) if p))

    def read_progress(self) -> dict[str, Any] | None:
        data = self.storage.read_json(PROGRESS)
        return data if isinstance(data, dict) else None

    def holder(self) -> Owner | None:
        """The live driver holding this job's suite folder, if any."""
        suite = self.storage.parent()
        return holder_of(suite.parent() if self.search else suite)

    def read_status_seen(self, holder: "Owner | object | None" = _UNKNOWN) -> RunStatus | None:
        """status.json as a reader should take it (see `seen`)."""
        return self.seen(self.read_status(), holder)

    def seen(self, status: RunStatus | None, holder: "Owner | object | None" = _UNKNOWN) -> RunStatus | None:
        """`status` as a reader should take it: a queued or running job whose driver is gone (no live holder
        of the suite folder, or another one) is interrupted, with when and its last epoch."""
        if status is None or status.state.final:
            return status
        live = self.holder() if holder is _UNKNOWN else holder
        if live is not None and (status.owner is None or live.run_id == status.owner.run_id):
            return status
        return self.interrupted(status)

    def interrupted(self, status: RunStatus) -> RunStatus:
        """`status` (queued or running) as ended by the death of its driver: interrupted, or succeeded when its
        worker had written result.json (last, whole) before the driver could record it."""
        when = max((t for t in (self.storage.modified(STATUS), self.storage.modified(PROGRESS)) if t), default=None)
        if self.read_result() is not None:
            reason = "finished; its driver stopped before it could record that"
            return status.model_copy(update={"state": JobState.SUCCEEDED, "reason": reason, "finished_at": when})
        progress = self.read_progress() or {}
        if status.state == JobState.RUNNING and progress.get("epoch"):
            at = f"after epoch {progress['epoch']} of {progress.get('epochs', '?')}"
        else:
            at = "before its first epoch" if status.state == JobState.RUNNING else "while queued"
        who = f" ({status.owner.describe()})" if status.owner else ""
        seen = f"; last seen {when:%Y-%m-%d %H:%M:%S} UTC" if when else ""
        reason = f"interrupted {at}: its driver{who} is gone{seen}. Run the suite again to resume it."
        return status.model_copy(update={"state": JobState.INTERRUPTED, "reason": reason, "finished_at": when})

    def write_spec(self, spec: SpecFile) -> None:
        self.storage.write_json(SPEC, spec)

    def write_status(self, status: RunStatus) -> None:
        self.storage.write_json(STATUS, status)

    def log_text(self) -> str:
        return self.storage.read_text(LOG) or ""

    def log_url(self) -> str:
        return self.storage.path_url(LOG)

    def has_log(self) -> bool:
        """Whether the job's log.txt was written (a file, not just the name)."""
        return self.storage.exists(LOG) and not self.storage.isdir(LOG)

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
        return _present(self.storage, self.job)

    def exists(self) -> bool:
        return bool(self.jobs()) or bool(self.searches())

    def search(self, name: str) -> "SearchStore":
        return SearchStore(self.storage.child(name), self.name, name)

    def searches(self) -> list["SearchStore"]:
        """Search folders present (those with search.json), by name."""
        return _present(self.storage, self.search)

    def runs(self) -> list[JobStore]:
        """Every job folder of the suite: its jobs, then each search's trials."""
        return [*self.jobs(), *(trial for search in self.searches() for trial in search.trials())]

    def lock(self, owner: Owner) -> SuiteLock:
        """The lock (lease on object storage) that makes `owner` this suite folder's one driver."""
        return SuiteLock(self.storage, owner)

    def holder(self) -> Owner | None:
        """The live driver holding this suite folder, if any."""
        return holder_of(self.storage)

    def settle(self, holder: Owner) -> list[tuple[str, RunStatus]]:
        """With the lock held by `holder`: record every job left queued or running by a dead driver as
        interrupted (or succeeded, when it had written its result). Those jobs, with their status as found."""
        marked = []
        for job in self.runs():
            status = job.read_status()
            if status is None or status.state.final:
                continue
            if status.owner is None or status.owner.run_id != holder.run_id:
                job.write_status(job.interrupted(status))
                marked.append((job.name, status))
        return marked

    def aside_name(self, job: str, spec_hash: str) -> str:
        """Where an earlier finished result of `job` (or an earlier search) is kept when a new spec replaces it."""
        base = f"{PREVIOUS}/{job}-{spec_hash[:12]}"
        name, n = base, 1
        while self.storage.exists(name):
            n += 1
            name = f"{base}-{n}"
        return name

    def set_aside(self, job: str, spec_hash: str) -> str:
        """Move the job's folder to `aside_name`, keeping its result; the relative name it went to."""
        name = self.aside_name(job, spec_hash)
        self.storage.move(job, name)
        return name

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
            for search in self.searches():
                (folder / search.name).mkdir()
                (folder / search.name / SEARCH).write_bytes(search.storage.read_bytes(SEARCH) or b"")
            for job in self.runs():
                (folder / job.label).mkdir()
                for name in REPORT_FILES:
                    data = job.storage.read_bytes(name)
                    if data is not None:
                        (folder / job.label / name).write_bytes(data)
            yield folder
            for name in write_back:
                path = folder / name
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] * path.is_file()
                for file in files:
                    self.storage.upload(file, file.relative_to(folder).as_posix())


SEARCH = "search.json"
TUNE = "tune"  # Ray Tune's experiment folder, what Tuner.restore continues from
NAMES = "trials.json"  # Tune's trial id -> the trial's name


@dataclass(frozen=True)
class SearchStore:
    """One search's folder: results/<suite>/<search>/ with search.json, Tune's experiment folder `tune/` and a
    job folder per trial, each with the full contract of a job."""

    storage: Storage
    suite: str
    name: str

    @property
    def url(self) -> str:
        return self.storage.url

    def exists(self) -> bool:
        return self.storage.exists(SEARCH)

    def trial(self, name: str) -> JobStore:
        return JobStore(self.storage.child(name), self.suite, name, search=self.name)

    def trials(self) -> list[JobStore]:
        """Trial folders present (those with spec.json), by name."""
        return _present(self.storage, self.trial)

    def read_definition(self) -> dict[str, Any] | None:
        """search.json: the search as it runs (its block, its base, the hash that decides a resume)."""
        data = self.storage.read_json(SEARCH)
        return data if isinstance(data, dict) else None

    def write_definition(self, data: dict[str, Any]) -> None:
        self.storage.write_json(SEARCH, data)

    def names(self) -> dict[str, str]:
        """Tune's trial id -> the trial's name, as given so far."""
        data = self.storage.read_json(NAMES)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def write_names(self, names: dict[str, str]) -> None:
        self.storage.write_json(NAMES, names)

    def tune_storage(self) -> tuple[str, str, Any]:
        """(storage_path, name, storage_filesystem) of Ray Tune's experiment, `tune/` in this folder: a local path
        and None, or the store's filesystem as pyarrow sees it (fsspec's, wrapped) and its path there."""
        if self.storage.local is not None:
            return str(self.storage.local), TUNE, None
        import pyarrow.fs

        return self.storage.path(), TUNE, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.storage.fs))

    def tune_url(self) -> str:
        return self.storage.path_url(TUNE)

    def has_tune(self) -> bool:
        return self.storage.exists(TUNE)

    def remove(self) -> None:
        self.storage.remove("")


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
        return _present(self.storage, self.suite)

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
        return "suite", suite.runs()
    jobs = [j for s in store.suites() for j in s.runs()]
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


def _present(storage: Storage, open_one: Callable[[str], Any]) -> list[Any]:
    """The folders under `storage` that `open_one` opens (a name gridrun writes) and that exist, by name."""
    out = []
    for name in storage.listdir():
        try:
            item = open_one(name)
        except ValueError:  # not a name gridrun writes: not a folder of ours
            continue
        if item.exists():
            out.append(item)
    return out
