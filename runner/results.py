"""The results folder: every path under a job folder, and atomic JSON writes.

Only this module joins paths under a job folder.
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas import RunResult, RunStatus, SpecFile

M = TypeVar("M", bound=BaseModel)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp file beside `path` to write into; once written it is fsynced and renamed over `path`,
    so a reader (or a resumed run) never sees half a file. On failure the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def read_model(path: Path, model: type[M]) -> M | None:
    """The file validated as `model`, or None when missing or invalid."""
    data = read_json(path)
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


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
