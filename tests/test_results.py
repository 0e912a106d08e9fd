"""The results writer: atomic JSON, typed reads, the job folder's paths."""

import json
import os
from pathlib import Path

import pytest
from jobhelp import make_job, run_worker

from runner.store.layout import DiskFullError, JobPaths, SuitePaths, read_model, write_json
from schemas import JobState, RunStatus


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "status.json"
    write_json(path, RunStatus(state=JobState.RUNNING, spec_hash="abc"))
    assert read_model(path, RunStatus).state == JobState.RUNNING
    write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    write_json(path, {"v": "old"})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json(path, {"v": "new"})
    assert json.loads(path.read_text()) == {"v": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_invalid_files_read_as_none(tmp_path: Path) -> None:
    paths = JobPaths.of(tmp_path, "s", "j")
    assert paths.read_status() is None
    paths.dir.mkdir(parents=True)
    paths.status.write_text("{half")
    assert paths.read_status() is None
    paths.status.write_text('{"state": "weird", "spec_hash": "x"}')
    assert paths.read_status() is None


def test_paths_of_a_job(tmp_path: Path) -> None:
    paths = JobPaths.of(tmp_path, "suite", "job")
    assert paths.dir == tmp_path / "suite" / "job"
    assert {p.name for p in (paths.spec, paths.status, paths.result, paths.log, paths.tb, paths.checkpoints)} == {
        "spec.json",
        "status.json",
        "result.json",
        "log.txt",
        "tb",
        "checkpoints",
    }
    assert paths.checkpoint("last", ".pt") == paths.checkpoints / "last.pt"
    write_json(paths.spec, {})
    assert [j.dir.name for j in SuitePaths.of(tmp_path, "suite").jobs()] == ["job"]


@pytest.mark.runs
@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_a_full_disk_is_one_clear_message(small_disk: Path, tmp_path: Path, framework: str) -> None:
    """A checkpoint that does not fit: exit code 2, one message naming the disk and the fix, no
    traceback, no temp file left, and the job's earlier files intact."""
    paths = make_job(small_disk, framework=framework, dataset={"limit": 32})
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stdout
    assert f"no space left on the disk of {paths.checkpoints}" in errors[0]
    assert "--results" in errors[0] and "Fix:" in errors[0]
    assert not list(paths.checkpoints.glob(".*")), "a partial checkpoint was left behind"
    assert not paths.result.exists()
    assert paths.read_spec() is not None


def test_a_write_that_fills_the_disk_becomes_a_disk_full_error(small_disk: Path) -> None:
    """No size known beforehand: the write fails on the full disk, the message says so, the old file stays."""
    path = small_disk / "result.json"
    write_json(path, {"v": "old"})
    with pytest.raises(DiskFullError, match=r"no space left on the disk of .*small disk \(\d+ MiB free\)"):
        write_json(path, {"v": "x" * 32 * 2**20})
    assert json.loads(path.read_text()) == {"v": "old"}
    assert [p.name for p in small_disk.iterdir()] == ["result.json"]
