"""The benchmarks still run: each prints its figures at a small size (a bench that silently breaks misleads)."""

import subprocess
import sys

from conftest import REPO


def test_the_report_bench_prints_cold_and_warm_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_report.py", "--jobs", "14"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for build in ("cold", "warm"):
        assert f"report over 14 job folders, {build}:" in done.stdout, done.stdout
