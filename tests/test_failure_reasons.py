"""Failure reasons a person can act on, from a real `gridrun run` on the embedded Ray with the process executor:
a worker SIGKILLed mid-epoch is told by its signal and epoch (not by its log's last progress line), and a Ray
task that failed before any log was written says so, in plain text.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from runner.store.layout import JobPaths

EPOCHS = 40
SUITE = f"""\
suite: failures
defaults:
  dataset: {{name: synthetic, image_size: 64, synthetic_size: 200}}
  model: {{arch: alexnet, weights: none, classifier_width: 32}}
  train: {{epochs: {EPOCHS}, batch_size: 50}}
  resources: {{gpus: 0, cpus: 1}}
jobs:
  - {{name: killed, framework: torch}}
  - {{name: no-log, framework: torch, train: {{epochs: 1}}}}
"""

pytestmark = pytest.mark.runs  # every test reads one real failed run


def _worker_of(job_dir: Path) -> int | None:
    """The pid of the training worker of `job_dir`, as its log's first line gives it (a warm-started worker is
    its server's child, not the driver's descendant), once that process is the worker of this job."""
    log = job_dir / "log.txt"
    found = re.search(r", pid (\d+)\n", log.read_text(errors="replace")) if log.is_file() else None
    if found is None:
        return None
    pid = int(found.group(1))
    try:  # a warm-started worker's title is one string; a cold one's, its arguments
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return None
    return pid if b"runner.train.worker" in argv and str(job_dir).encode() in argv else None


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the suite; SIGKILL the `killed` job's worker once an epoch is done (stopped first, so that the epoch
    it was in is known); `no-log`'s log.txt is a folder, so its Ray task fails before a log is written."""
    root = tmp_path_factory.mktemp("failures")
    (root / "failures.yaml").write_text(SUITE)
    results = root / "results"
    killed = JobPaths.of(results, "failures", "killed")
    no_log = JobPaths.of(results, "failures", "no-log")
    no_log.log.mkdir(parents=True)
    cmd = [sys.executable, "-m", "runner", "run", str(root / "failures.yaml"), "--results", str(results),
           "--cache", str(root / "cache"), "--executor", "process", "--cpus", "2", "--no-report"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    with open(root / "driver.log", "wb") as out:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    finished = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            progress = json.loads(killed.progress.read_text()) if killed.progress.is_file() else {}
            pid = _worker_of(killed.dir) if progress.get("epoch", 0) >= 1 else None
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)  # between epochs no more: progress.json now says what it finished
                finished = json.loads(killed.progress.read_text())["epoch"]
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = (root / "driver.log").read_text(errors="replace")
    assert finished is not None, f"the worker never finished an epoch:\n{output}"
    return {"killed": killed, "no_log": no_log, "finished": finished, "output": output, "code": driver.returncode}


def test_a_killed_worker_is_told_by_its_signal_and_epoch(failed_run: dict) -> None:
    status = failed_run["killed"].read_status()
    assert status is not None and status.state == "failed", failed_run["output"]
    k = failed_run["finished"]
    assert status.reason.startswith(
        f"worker killed by SIGKILL (signal 9) during epoch {k + 1} of {EPOCHS} (last finished: {k})"
    ), status.reason
    assert f"epoch {k}/{EPOCHS}" not in status.reason, "the log's last progress line is no error"
    assert f"(log: {failed_run['killed'].log})" in status.reason and failed_run["killed"].log.is_file()
    assert status.exit_code == -signal.SIGKILL
    assert failed_run["code"] == 1


def test_a_ray_task_failure_is_plain_text_and_names_no_missing_log(failed_run: dict) -> None:
    status = failed_run["no_log"].read_status()
    assert status is not None and status.state == "failed", failed_run["output"]
    assert status.reason.startswith("the run's Ray task failed: IsADirectoryError: "), status.reason
    written = json.loads(failed_run["no_log"].status.read_text())["reason"]  # as in the file, not as read back
    assert "\x1b" not in written and written.isprintable(), repr(written)
    assert "(log: " not in status.reason, "log.txt was never written: it is not named as the log"
    assert status.reason.endswith("(no log was written)"), status.reason
