"""The benchmarks still run: each prints its figures at a small size (a bench that silently breaks misleads)."""

import subprocess
import sys

import pytest
from conftest import REPO


def test_the_report_bench_prints_cold_and_warm_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_report.py", "--jobs", "14"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for build in ("cold", "warm"):
        assert f"report over 14 job folders, {build}:" in done.stdout, done.stdout


@pytest.mark.slow  # over a minute: a Ray run of one job, per-run starts, a small sweep
def test_the_overhead_bench_prints_the_command_run_and_sweep_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_overhead.py", "--sweep", "3", "--frameworks", "torch", "--no-docker"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "driver: imported frameworks none" in out, out
    for figure in (
        "one-job command:",
        "one-job command on the head `gridrun up` keeps:",
        "phases: checks",
        "torch      process cold: run",
        "torch      process warm: run",
        "sweep of 3 one-epoch jobs",
    ):
        assert figure in out, out


@pytest.mark.slow  # over a minute: each framework's worker and a bare loop, and the study's data path
def test_the_training_bench_prints_each_ratio() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_train.py", "--images", "64", "--epochs", "2", "--width", "16", "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in ("torch: AlexNet 64px", "keras: AlexNet 64px", "ratio gridrun / study-style data path"):
        assert line in done.stdout, done.stdout
    assert done.stdout.count("ratio") == 3, done.stdout
