"""Test helper: build a job folder with spec.json and run the real worker on it.

    paths = make_job(tmp_path, framework="torch", arch="alexnet", train={"epochs": 2})
    proc = run_worker(paths, cache)

Overrides are partial job specs, merged into small CPU-friendly defaults (synthetic data, 64 px).
The results root has spaces and quotes in its name, to catch quoting bugs.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.store.layout import JobPaths, write_json
from schemas import JobSpec, SpecFile

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = "results with 'quotes' and spaces"

# A small valid suite, for tests that spoil one part of it.
GOOD = """\
suite: s
defaults:
  dataset: {name: digits, image_size: 64}
  resources: {gpus: 0, cpus: 1}
jobs:
  - name: a
    framework: torch
    model: {arch: alexnet}
"""


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def job_spec(framework: str = "torch", arch: str = "alexnet", name: str = "job", **overrides: Any) -> JobSpec:
    """A small job: synthetic 32 px images resized to 64, 200 training images, one epoch."""
    base: dict[str, Any] = {
        "name": name,
        "framework": framework,
        "model": {"arch": arch},
        "dataset": {"name": "synthetic", "image_size": 64, "limit": 200, "synthetic_size": 400},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 256},
        "executor": "process",
    }
    return JobSpec.model_validate(merge(base, overrides))


def make_job(
    tmp_path: Path,
    framework: str = "torch",
    arch: str = "alexnet",
    name: str = "job",
    suite: str = "test-suite",
    spec_hash: str | None = None,
    **overrides: Any,
) -> JobPaths:
    """Write results/<suite>/<name>/spec.json under tmp_path; return the job's paths."""
    spec = job_spec(framework, arch, name, **overrides)
    paths = JobPaths.of(tmp_path / RESULTS_DIR, suite, name)
    write_json(paths.spec, spec_file(spec, suite, spec_hash))
    return paths


def spec_file(spec: JobSpec, suite: str = "test-suite", spec_hash: str | None = None) -> SpecFile:
    """The SpecFile the driver would write for `spec`."""
    return SpecFile(
        suite=suite,
        job=spec.name,
        spec_hash=spec_hash or spec.digest("test"),
        code_version="test",
        declared=spec,
        spec=spec,
        executor="process",
    )


def worker_command(paths: JobPaths, cache: Path) -> list[str]:
    return [sys.executable, "-m", "runner.train.worker", str(paths.dir), "--cache", str(cache)]


def worker_env(threads: int = 2) -> dict[str, str]:
    # Few CPU threads: tests share the machine with other runs.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}


def run_worker(paths: JobPaths, cache: Path, timeout: float = 300, **popen: Any) -> subprocess.CompletedProcess:
    """Run `python -m runner.train.worker` to the end; stdout and stderr together in .stdout."""
    return subprocess.run(
        worker_command(paths, cache),
        cwd=REPO,
        env=popen.pop("env", worker_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        **popen,
    )


def start_worker(paths: JobPaths, cache: Path, log: Path) -> subprocess.Popen:
    """Start the worker in the background, its output going to `log` (for kill-and-resume tests)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            worker_command(paths, cache), cwd=REPO, env=worker_env(), stdout=out, stderr=subprocess.STDOUT
        )


def kill_after_first_epoch(paths: JobPaths, cache: Path, log: Path, timeout: float = 240) -> None:
    """Start the worker and SIGKILL it as soon as progress.json shows an epoch (an interrupted run)."""
    import json
    import signal
    import time

    proc = start_worker(paths, cache, log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            progress = json.loads(paths.progress.read_text()) if paths.progress.is_file() else {}
            if progress.get("epoch", 0) >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()


def scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder, read back with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def resume_and_check(paths: JobPaths, cache: Path, k: int, epochs: int) -> None:
    """Run a job killed after epoch k again: it resumes at k + 1 and records every epoch once."""
    from runner.train.common import TAGS
    from schemas import RunResult

    again = run_worker(paths, cache)
    assert again.returncode == 0, again.stdout
    assert f"resuming from epoch {k + 1}" in again.stdout
    result = RunResult.model_validate_json(paths.result.read_text())
    assert [e.epoch for e in result.epochs] == list(range(1, epochs + 1))
    assert result.resumed_from_epoch == k + 1
    # TensorBoard holds each epoch once, across the killed run's events and the resumed one's.
    assert [s for s, _ in scalars(paths.tb)[TAGS["val_accuracy"]]] == list(range(1, epochs + 1))


def descendants(root: int) -> list[int]:
    """`root` and every process below it (Linux: read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
