"""The results folder: every path under a job folder, and atomic JSON writes.

Only this module joins paths under a job folder.
"""

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runner.errors import UserError
from schemas import RunResult, RunStatus, SpecFile

M = TypeVar("M", bound=BaseModel)

# Below this much free space a failed write is taken for a full disk: libraries that write through
# C++ streams (torch.save) report it as a RuntimeError without errno.
NEARLY_FULL_BYTES = 64 * 2**20


class DiskFullError(UserError):
    """A write failed because the disk under the results folder is full."""


def _full_disk_error(folder: Path, free: int, needed: int = 0) -> DiskFullError:
    need = f", about {needed / 2**20:.0f} MiB needed" if needed else ""
    return DiskFullError(
        f"no space left on the disk of {folder} ({free / 2**20:.0f} MiB free{need}) while writing there. "
        "Fix: free space on that disk, or give gridrun run --results a folder on a bigger disk, "
        "then run the suite again: finished jobs are kept and this one resumes from its last checkpoint."
    )


def _disk_full(error: BaseException, folder: Path) -> DiskFullError | None:
    """A clear error when `error` came from a full disk (checked before the partial file is removed)."""
    free = shutil.disk_usage(folder).free
    if not (isinstance(error, OSError) and error.errno == errno.ENOSPC) and free >= NEARLY_FULL_BYTES:
        return None
    return _full_disk_error(folder, free)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp", size_hint: int = 0) -> Iterator[Path]:
    """A temp file beside `path` to write into; once written it is fsynced and renamed over `path`,
    so a reader (or a resumed run) never sees half a file. On failure the temp file is removed,
    and a full disk becomes a DiskFullError that says so. With `size_hint` (bytes about to be written)
    that error comes before anything is written: some writers (h5py) crash the process at exit after
    a failed write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint:
        free = shutil.disk_usage(path.parent).free
        if free < size_hint + NEARLY_FULL_BYTES:
            raise _full_disk_error(path.parent, free, size_hint)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(e, path.parent)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def links_leaving(folder: Path, root: Path) -> list[tuple[Path, Path, Path]]:
    """Symbolic links that would take what is written to `folder`, or under it, out of bounds: (link, where it
    leads, the folder it leaves). `folder` itself, and every folder between `root` and it, must stay inside
    `root`; a link under `folder` must stay inside `folder`: a job's files are its own. A link that leads
    nowhere yet counts by the path it names (opening it for writing would create that)."""
    folder, root = Path(folder).absolute(), Path(root).absolute()
    bound = root.resolve()
    place = root
    for part in folder.relative_to(root).parts if _within(folder, root) else ():
        place = place / part
        if place.is_symlink() and not _within(place.resolve(), bound):
            return [(place, place.resolve(), root)]
    if not folder.is_dir():
        return []
    own = folder.resolve()
    found = []
    for parent, dirs, files in os.walk(folder):  # never descends into a linked folder
        for name in sorted(dirs + files):
            path = Path(parent, name)
            if path.is_symlink() and not _within(path.resolve(), own):
                found.append((path, path.resolve(), folder))
    return found


def link_refusal(folder: Path, root: Path) -> str:
    """One message for what `links_leaving` finds ('' for nothing): each link, where it leads, and the fix."""
    found = links_leaving(folder, root)
    if not found:
        return ""
    shown = "; ".join(f"{link} is a symbolic link to {target}, outside {bound}" for link, target, bound in found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    return (
        f"{shown}{more}: gridrun neither writes nor reads a job's files through a link that leaves its folder. "
        f"Fix: remove the link (rm {found[0][0]}); to keep results on another disk, give --results a folder there."
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see atomic_path)."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def validated(data: Any, model: type[M]) -> M | None:
    """Parsed JSON validated as `model`, or None when missing (None) or invalid."""
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


# What to do about a job's file that is there but unusable: the next run of the job writes it anew.
BAD_FILE_FIX = "Fix: remove it or re-run the job"


def parse_model(raw: bytes | None, model: type[M], name: str) -> tuple[M | None, str]:
    """The bytes of the file `name` validated as `model`, and '' — or None and what is wrong with the file,
    in a line that names it ('status.json is not valid JSON (line 1 col 5)'). A missing file (None) is
    (None, ''): not a problem, a job that has not got that far."""
    if raw is None:
        return None, ""
    if not raw.strip():
        return None, f"{name} is empty"
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as e:
        return None, f"{name} is not text (byte {e.start} cannot be decoded): not valid JSON"
    except json.JSONDecodeError as e:
        return None, f"{name} is not valid JSON (line {e.lineno} col {e.colno})"
    try:
        return model.model_validate(data), ""
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return None, f"{name} is not what gridrun writes: {where + ': ' if where else ''}{first['msg']}{more}"


def read_model(path: Path, model: type[M]) -> M | None:
    """The file validated as `model`, or None when missing or invalid."""
    return validated(read_json(path), model)


@dataclass(frozen=True)
class JobPaths:
    """Every path of one job's folder: results/<suite>/<job>/."""

    dir: Path

    @classmethod
    def of(cls, root: Path, suite: str, job: str) -> "JobPaths":
        return cls(Path(root) / suite / job)

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def progress(self) -> Path:
        return self.dir / "progress.json"

    @property
    def log(self) -> Path:
        return self.dir / "log.txt"

    @property
    def tb(self) -> Path:
        return self.dir / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, which: str, suffix: str) -> Path:
        """checkpoints/<which><suffix>, e.g. last.pt or best.weights.h5."""
        return self.checkpoints / f"{which}{suffix}"

    def read_spec(self) -> SpecFile | None:
        return read_model(self.spec, SpecFile)

    def read_status(self) -> RunStatus | None:
        return read_model(self.status, RunStatus)

    def read_result(self) -> RunResult | None:
        return read_model(self.result, RunResult)


@dataclass(frozen=True)
class SuitePaths:
    """results/<suite>/: the suite as run, its summary, its report and its job folders."""

    dir: Path

    @classmethod
    def of(cls, root: Path, suite: str) -> "SuitePaths":
        return cls(Path(root) / suite)

    @property
    def suite_file(self) -> Path:
        return self.dir / "suite.yaml"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def job(self, name: str) -> JobPaths:
        return JobPaths(self.dir / name)

    def jobs(self) -> list[JobPaths]:
        """Job folders present, by name."""
        if not self.dir.is_dir():
            return []
        return [JobPaths(p) for p in sorted(self.dir.iterdir()) if (p / "spec.json").is_file()]
