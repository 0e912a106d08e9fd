"""The results writer: atomic JSON, typed reads, the job folder's paths."""

import json
import os
from pathlib import Path

import pytest

from runner.results import JobPaths, SuitePaths, read_model, write_json
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
