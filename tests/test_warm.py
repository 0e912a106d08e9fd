"""Warm starts: a torch run forked from a process that has imported its framework gives what a cold start gives,
shares nothing with the runs before it, and dies with whoever asked for it or with its server."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO

from runner import execute
from runner.execute import Launch, warm
from runner.store.layout import JobPaths, write_json
from schemas import JobSpec, SpecFile

pytestmark = pytest.mark.runs  # trains tiny models


def job(root: Path, name: str, framework: str = "torch", epochs: int = 1, cpus: float = 1) -> tuple[JobPaths, SpecFile]:
    spec = JobSpec.model_validate({
        "name": name, "framework": framework,
        "dataset": {"name": "synthetic", "image_size": 64, "synthetic_size": 64},
        "model": {"arch": "alexnet", "weights": "none", "classifier_width": 16},
        "train": {"epochs": epochs, "batch_size": 16, "eval_batch_size": 64},
        "resources": {"gpus": 0, "cpus": cpus},
    })  # fmt: skip
    paths = JobPaths.of(root, "warm", name)
    spec_file = SpecFile(suite="warm", job=name, spec_hash="h", code_version="v", declared=spec, spec=spec)
    write_json(paths.spec, spec_file)
    return paths, spec_file


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """This node's folder and a run id; every server the test started is ended after it."""
    monkeypatch.setenv("GRIDRUN_NODE_DIR", str(tmp_path / "node"))
    run_id = uuid.uuid4().hex[:12]
    (tmp_path / "cache").mkdir()
    yield tmp_path, run_id
    for framework in ("torch", "tensorflow"):
        pid = warm.server_pid(tmp_path / "node" / "warm", run_id, framework)
        if pid is not None:
            with_suppressed(lambda p=pid: os.kill(p, signal.SIGTERM))


def with_suppressed(call) -> None:
    with contextlib.suppress(ProcessLookupError):
        call()


def run(root: Path, run_id: str, paths: JobPaths, spec_file: SpecFile, stop: threading.Event | None = None):
    return execute.get("process").run(Launch(paths, root / "cache", spec_file, run_id, stop=stop))


def worker_pid(paths: JobPaths, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r", pid (\d+)\n", paths.log.read_text() if paths.log.exists() else "")
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no worker pid in {paths.log}")


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether the process ends within `timeout` (a SIGKILL is delivered, not awaited)."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for this purpose: it no longer runs.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def epochs_of(paths: JobPaths) -> list[dict]:
    result = json.loads(paths.result.read_text())
    return [
        {k: e[k] for k in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy")} for e in result["epochs"]
    ]


def test_warm_runs_give_what_a_cold_run_gives_and_share_nothing(node, monkeypatch: pytest.MonkeyPatch) -> None:
    root, run_id = node
    monkeypatch.setenv(warm.WARM_ENV, "0")
    cold, spec_file = job(root / "cold", "a", epochs=2)
    assert run(root, run_id, cold, spec_file).exit_code == 0
    assert "warm start" not in cold.log.read_text()
    monkeypatch.delenv(warm.WARM_ENV)
    first, spec_file = job(root / "first", "a", epochs=2)
    two, two_spec = job(root / "two", "b", cpus=2)
    again, spec_file = job(root / "again", "a", epochs=2)
    for paths, spec in ((first, spec_file), (two, two_spec), (again, spec_file)):
        assert run(root, run_id, paths, spec).exit_code == 0, paths.log.read_text()
        assert "(warm start: forked from a process that has imported PyTorch)" in paths.log.read_text()
    # The same seed gives the same numbers, whatever ran in the server's children before.
    assert epochs_of(first) == epochs_of(cold) == epochs_of(again)
    pids = {worker_pid(p) for p in (cold, first, two, again)}
    server = warm.server_pid(root / "node" / "warm", run_id, "torch")
    assert len(pids) == 4 and server is not None and server not in pids
    # Each run keeps to the threads it reserved: the server's pools never started.
    assert "limits: 1 compute thread(s), 1 inter-op" in first.log.read_text()
    assert "limits: 2 compute thread(s), 2 inter-op" in two.log.read_text()


def test_a_stopped_warm_run_ends_at_once(node) -> None:
    root, run_id = node
    paths, spec_file = job(root, "long", epochs=500)
    stop = threading.Event()
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(run(root, run_id, paths, spec_file, stop)))
    thread.start()
    pid = worker_pid(paths)
    stop.set()
    thread.join(timeout=30)
    assert outcome and outcome[0].stopped, outcome
    assert gone(pid)


ASKER = """
import sys, uuid
from pathlib import Path
from runner import execute
from runner.execute import Launch
from runner.store.layout import JobPaths
paths = JobPaths(Path(sys.argv[1]))
execute.get("process").run(Launch(paths, Path(sys.argv[2]), paths.read_spec(), sys.argv[3]))
"""


def test_a_warm_run_dies_with_the_process_that_asked_for_it(node) -> None:
    root, run_id = node
    paths, _ = job(root, "orphan", epochs=500)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    asker = subprocess.Popen([sys.executable, "-c", ASKER, str(paths.dir), str(root / "cache"), run_id], env=env)
    pid = worker_pid(paths)
    assert "warm start" in paths.log.read_text()
    asker.kill()  # as the kernel ends a Ray worker: no clean-up of its own
    asker.wait()
    assert gone(pid)


def test_a_dead_server_fails_its_run_and_the_next_run_starts_another(node) -> None:
    root, run_id = node
    paths, spec_file = job(root / "a", "long", epochs=500)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(run(root, run_id, paths, spec_file)))
    thread.start()
    pid = worker_pid(paths)
    server = warm.server_pid(root / "node" / "warm", run_id, "torch")
    assert server is not None
    os.kill(server, signal.SIGKILL)
    thread.join(timeout=30)
    assert outcome and outcome[0].exit_code == -signal.SIGKILL and outcome[0].stopped
    assert gone(pid)
    paths, spec_file = job(root / "b", "short")
    assert run(root, run_id, paths, spec_file).exit_code == 0
    assert "warm start" in paths.log.read_text()
    assert warm.server_pid(root / "node" / "warm", run_id, "torch") not in (None, server)


@pytest.mark.tensorflow
def test_tensorflow_starts_cold(node) -> None:
    root, run_id = node
    paths, spec_file = job(root, "tf", framework="tensorflow")
    assert run(root, run_id, paths, spec_file).exit_code == 0
    assert "warm start" not in paths.log.read_text()
    assert warm.server_pid(root / "node" / "warm", run_id, "tensorflow") is None


def test_the_locks_and_logs_of_servers_long_gone_are_pruned(tmp_path: Path) -> None:
    old = time.time() - warm.STALE_S - 60
    for name in ("gone-torch-1", "alive-torch-1", "recent-torch-1"):
        for suffix in (".lock", ".log"):
            (tmp_path / name).with_suffix(suffix).write_text("")
    (tmp_path / "alive-torch-1.pid").write_text("1")
    for name in ("gone-torch-1", "alive-torch-1"):
        for suffix in (".lock", ".log"):
            os.utime((tmp_path / name).with_suffix(suffix), (old, old))
    assert warm.prune(tmp_path) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f"{n}{s}" for n in ("alive-torch-1", "recent-torch-1") for s in (".lock", ".log", ".pid")
                    if (n, s) != ("recent-torch-1", ".pid")]  # fmt: skip
