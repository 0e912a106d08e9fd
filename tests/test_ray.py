"""Scheduling on a real local Ray with logical GPUs: placement, CUDA ids, refusal (signals: test_survival)."""

import re
from pathlib import Path

import pytest
from conftest import gridrun

from runner.store.layout import SuitePaths
from schemas import JobState

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`

TWO_GPU_JOBS = """\
suite: gpus
defaults:
  dataset: {name: synthetic, image_size: 64, synthetic_size: 200}
  model: {arch: alexnet, classifier_width: 32}
  train: {epochs: 1, batch_size: 50}
  # Ray's GPUs here are logical (--gpus on a CPU machine): the CPU stands in, declared and recorded.
  resources: {gpus: 1, cpus: 1, gpu_fallback: cpu}
jobs:
  - {name: first, framework: torch}
  - {name: second, framework: torch}
"""


def test_two_one_gpu_jobs_run_side_by_side_each_with_its_own_gpu(tmp_path: Path) -> None:
    suite = tmp_path / "gpus.yaml"
    suite.write_text(TWO_GPU_JOBS)
    results = tmp_path / "results"
    proc = gridrun(
        "run",
        str(suite),
        "--results",
        str(results),
        "--gpus",
        "2",
        "--executor",
        "process",
        "--cache",
        str(tmp_path / "cache"),
        "--no-report",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {p.dir.name: p for p in SuitePaths.of(results, "gpus").jobs()}
    seen = {}
    for name, paths in jobs.items():
        status = paths.read_status()
        assert status.state == JobState.SUCCEEDED
        visible = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", paths.log.read_text()).group(1)
        assert visible == ",".join(status.gpu_ids), "the job sees exactly the GPU Ray assigned"
        seen[name] = (visible, status.started_at, status.finished_at)
        # The GPU was Ray's logical one: the CPU stood in, as the job declares, and the result says so.
        (sub,) = paths.read_result().substitutions
        assert (sub.kind, sub.wanted, sub.used) == ("device", "1 GPU(s)", "cpu")
        assert f"CUDA_VISIBLE_DEVICES={visible}" in sub.reason and "resources.gpu_fallback: cpu" in sub.reason
    assert {seen["first"][0], seen["second"][0]} == {"0", "1"}
    (_, s1, f1), (_, s2, f2) = seen["first"], seen["second"]
    assert s1 < f2 and s2 < f1, "with two GPUs both jobs run at the same time"


def test_job_needing_three_gpus_is_refused_before_anything_starts(tmp_path: Path) -> None:
    suite = tmp_path / "big.yaml"
    suite.write_text(
        TWO_GPU_JOBS.replace(
            "  - {name: second, framework: torch}",
            "  - {name: second, framework: torch, train: {batch_size: 48}, resources: {gpus: 3}}",
        )
    )
    results = tmp_path / "results"
    proc = gridrun("run", str(suite), "--results", str(results), "--gpus", "2", "--executor", "process")
    assert proc.returncode == 2
    assert "second: needs 3 GPU(s) and 1 CPU(s) for its 3 replicas; the largest node has 2 GPU(s)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not results.exists()
