"""Nothing lost, nothing stale, nothing left: one driver per suite folder, signals, killed drivers.

Each test drives the real CLI (or the real lock on a real folder and a real S3 API) and kills for real.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from s3server import S3Server

from runner.execute.reaper import marked
from runner.store import ResultsStore
from runner.store.lock import Busy, SuiteLock, holder_of, me
from runner.store.storage import Storage

LONG = """\
suite: long
defaults:
  framework: torch
  dataset: {name: synthetic, image_size: 64, synthetic_size: 400}
  model: {arch: alexnet, classifier_width: 32}
  train: {epochs: EPOCHS, batch_size: 50, optimizer: {name: sgd, lr: 0.01}}
  resources: {gpus: 0, cpus: 1}
  executor: process
jobs:
  - {name: first}
"""


def write_suite(tmp_path: Path, epochs: int, lr: float = 0.01) -> Path:
    suite = tmp_path / "long.yaml"
    suite.write_text(LONG.replace("EPOCHS", str(epochs)).replace("lr: 0.01", f"lr: {lr}"))
    return suite


def start(tmp_path: Path, suite: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`gridrun run` in its own session, as from a terminal (Ctrl-C reaches its whole process group)."""
    cmd = [sys.executable, "-m", "runner", "run", str(suite), "--results", str(tmp_path / "results")]
    return subprocess.Popen(
        [*cmd, "--cache", str(tmp_path / "cache"), "--no-report"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


def job_dir(tmp_path: Path, name: str = "first") -> Path:
    return tmp_path / "results" / "long" / name


def epoch(tmp_path: Path) -> int:
    try:
        return json.loads((job_dir(tmp_path) / "progress.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_epoch(tmp_path: Path, driver: subprocess.Popen[str], n: int, within: float = 240) -> None:
    deadline = time.monotonic() + within
    while epoch(tmp_path) < n:
        if driver.poll() is not None:
            pytest.fail(f"the driver ended ({driver.returncode}) before epoch {n}: {driver.stdout.read()}")
        assert time.monotonic() < deadline, f"no epoch {n} within {within} s"
        time.sleep(0.2)


def run_id(tmp_path: Path) -> str:
    return json.loads((job_dir(tmp_path) / "status.json").read_text())["owner"]["run_id"]


def left_behind(run: str, within: float = 30) -> list[str]:
    """The processes of run `run` still there after `within` seconds (its watchdog sweeps a few seconds in)."""
    deadline = time.monotonic() + within
    while (pids := marked(run)) and time.monotonic() < deadline:
        time.sleep(0.5)
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return out


# ---- the lock itself ----------------------------------------------------------------------------------------

HOLD = """\
import sys, time
sys.path.insert(0, {repo!r})
from runner.store.lock import SuiteLock, me
from runner.store.storage import Storage
lock = SuiteLock(Storage.open(sys.argv[1], create=True), me("holder-run"))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold(where: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(repo=str(REPO)), where],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_suite_folder_is_refused_with_who_and_since_and_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "suite"
    holder = hold(str(folder))
    try:
        owner = holder_of(Storage.open(folder))
        assert owner is not None and owner.pid == holder.pid and owner.run_id == "holder-run"
        second = SuiteLock(Storage.open(folder), me("second-run"))
        with pytest.raises(Busy) as refused:
            second.acquire()
        message = str(refused.value)
        assert f"pid {holder.pid} on " in message and "since 20" in message and "Fix:" in message
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the kernel drops the lock
        holder.wait()
    assert holder_of(Storage.open(folder)) is None
    second.acquire()
    assert holder_of(Storage.open(folder)).run_id == "second-run"
    second.release()


def test_a_lock_that_created_the_folders_leaves_none_when_nothing_was_run(tmp_path: Path) -> None:
    lock = SuiteLock(Storage.open(tmp_path / "new" / "suite"), me("r"))
    lock.acquire()
    lock.release()
    assert not (tmp_path / "new").exists()


STOPS = [(signal.SIGTERM, 143, "stopped by SIGTERM"), (signal.SIGINT, 130, "interrupted")]


@pytest.mark.parametrize("sig, code, line", STOPS)
def test_a_stop_while_the_command_still_imports_exits_with_its_code_and_no_traceback(
    tmp_path: Path, sig: int, code: int, line: str
) -> None:
    # The command line takes a second or more to import on a busy machine; a signal then is a stop like any other.
    started = start(tmp_path, write_suite(tmp_path, 1))
    time.sleep(0.15)
    started.send_signal(sig)
    out, _ = started.communicate(timeout=60)
    assert started.returncode == code, out
    assert line in out and "Traceback" not in out


# A stop signal that arrives while `import ray` runs, sent by an import hook at one of Ray's own modules.
STOP_IN_RAY_IMPORT = """
import os, runpy, signal, sys

class StopInRayImport:
    def find_spec(self, name, path=None, target=None):
        if name == "ray._private.worker":
            os.kill(os.getpid(), int(os.environ["STOP_SIGNAL"]))
        return None

sys.meta_path.insert(0, StopInRayImport())
sys.argv = ["gridrun", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__")
"""


@pytest.mark.parametrize("sig, code, line", STOPS)
def test_a_stop_that_cuts_rays_import_short_exits_with_its_code_and_no_traceback(
    tmp_path: Path, sig: int, code: int, line: str
) -> None:
    # Ray half imported cannot be imported again: the clean-up must not try (it ended such a stop with code 1).
    suite = write_suite(tmp_path, 1)
    cmd = [sys.executable, "-c", STOP_IN_RAY_IMPORT, "run", str(suite), "--results", str(tmp_path / "results")]
    out = subprocess.run(
        [*cmd, "--cache", str(tmp_path / "cache"), "--no-report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400", "STOP_SIGNAL": str(int(sig))},
    )
    said = out.stdout + out.stderr
    assert out.returncode == code, said
    assert line in said and "Traceback" not in said, said
    assert not (tmp_path / "results" / "long" / "first" / "result.json").exists()


@pytest.mark.runs
def test_a_lease_on_object_storage_refuses_a_second_driver_and_lapses_when_its_holder_dies(
    s3server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3server.make_bucket("lease-bucket")
    env = {**s3server.env, "GRIDRUN_LEASE_SECONDS": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    where = "s3://lease-bucket/results/suite"
    storage = Storage.open(where)
    assert storage.create_bytes("probe", b"1") and not storage.create_bytes("probe", b"2")
    assert storage.read_bytes("probe") == b"1", "an exclusive create never replaces what is there"
    holder = hold(where, env)
    try:
        time.sleep(2.5)  # past one lease length: the holder's renewals keep it
        with pytest.raises(Busy) as refused:
            SuiteLock(Storage.open(where), me("second-run")).acquire()
        assert f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(2.5)  # no renewal now: the lease lapses
    assert holder_of(Storage.open(where)) is None
    lock = SuiteLock(Storage.open(where), me("second-run"))
    lock.acquire()
    assert holder_of(Storage.open(where)).run_id == "second-run"
    lock.release()
    assert Storage.open(where).read_bytes("lease.json") is None


# ---- signals and killed drivers --------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_sigterm_and_sighup_stop_training_at_once_and_leave_nothing_running(tmp_path: Path) -> None:
    # The three drivers run side by side: each in its own folder, with its own embedded Ray.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    places = {sig: tmp_path / sig.name for sig in signals}
    drivers = {}
    for sig, place in places.items():
        place.mkdir()
        drivers[sig] = start(place, write_suite(place, epochs=300))
    try:
        for sig, place in places.items():
            wait_for_epoch(place, drivers[sig], 2)
        # Meanwhile, a second run of the suite with another spec is refused and changes nothing.
        place, driver = places[signal.SIGTERM], drivers[signal.SIGTERM]
        spec_before = (job_dir(place) / "spec.json").read_bytes()
        (place / "other").mkdir()
        other = write_suite(place / "other", 300, lr=0.02)
        second = gridrun("run", str(other), "--results", str(place / "results"), "--cache", str(place / "c"))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by another gridrun: pid {driver.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and "embedded local Ray" not in second.stdout
        assert (job_dir(place) / "spec.json").read_bytes() == spec_before and driver.poll() is None
        runs = {sig: run_id(place) for sig, place in places.items()}
        at_signal = {}
        for sig, driver in drivers.items():
            at_signal[sig] = epoch(places[sig])
            if sig == signal.SIGINT:
                os.killpg(driver.pid, sig)  # what a terminal sends on Ctrl-C: to the whole foreground group
            else:
                driver.send_signal(sig)
        outs = {sig: driver.communicate(timeout=120)[0] for sig, driver in drivers.items()}
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    for sig, place in places.items():
        out = outs[sig]
        assert drivers[sig].returncode == 128 + sig, out
        assert "Traceback" not in out and "SIGTERM received" not in out and "*** " not in out, out
        # An epoch takes about a second here: a stop that took 30 s (as it did) would show 30 more.
        done = epoch(place)
        assert done - at_signal[sig] <= 3, f"{sig.name}: epoch {at_signal[sig]} at the signal, {done} at the end"
        status = json.loads((job_dir(place) / "status.json").read_text())
        name = "Ctrl-C" if sig == signal.SIGINT else sig.name
        assert status["state"] == "cancelled" and status["reason"] == f"cancelled by {name}", status
        assert left_behind(runs[sig]) == [], sig.name


@pytest.mark.slow
def test_a_changed_spec_keeps_the_earlier_result_and_a_result_written_before_its_driver_died_counts(
    tmp_path: Path,
) -> None:
    results, cache = str(tmp_path / "results"), str(tmp_path / "cache")
    suite = write_suite(tmp_path, epochs=1)
    first = gridrun("run", str(suite), "--results", results, "--cache", cache, "--no-report")
    assert first.returncode == 0, first.stdout + first.stderr
    old = json.loads((job_dir(tmp_path) / "spec.json").read_text())["spec_hash"]
    old_result = (job_dir(tmp_path) / "result.json").read_bytes()

    # The driver died after the worker wrote result.json, before it recorded the success.
    status_file = job_dir(tmp_path) / "status.json"
    status = json.loads(status_file.read_text())
    status.update(state="running", owner={**status["owner"], "run_id": "dead-driver", "pid": 999999})
    status_file.write_text(json.dumps(status))
    shown = gridrun("status", results)
    assert "succeeded" in shown.stdout and "its driver stopped before it could record that" in shown.stdout
    skipped = gridrun("run", str(suite), "--results", results, "--cache", cache, "--no-report")
    assert skipped.returncode == 0 and "done with the same spec" in skipped.stdout, skipped.stdout
    assert (job_dir(tmp_path) / "result.json").read_bytes() == old_result, "not trained again"

    write_suite(tmp_path, epochs=1, lr=0.02)
    second = gridrun("run", str(suite), "--results", results, "--cache", cache, "--no-report")
    assert second.returncode == 0, second.stdout + second.stderr
    kept = f"_previous/first-{old[:12]}"
    assert "train.optimizer.lr 0.01 → 0.02" in second.stdout, second.stdout  # the plan it printed
    assert "the earlier result is kept in" in second.stdout and kept in second.stdout, second.stdout
    aside = tmp_path / "results" / "long" / kept
    assert (aside / "result.json").read_bytes() == old_result, "the earlier finished result is kept whole"
    assert json.loads((aside / "spec.json").read_text())["spec_hash"] == old
    new = json.loads((job_dir(tmp_path) / "spec.json").read_text())
    assert new["spec_hash"] != old and (job_dir(tmp_path) / "result.json").is_file()
    assert [j.name for j in ResultsStore.open(results).suite("long").jobs()] == ["first"]


@pytest.mark.slow
def test_run_with_wait_waits_for_the_holder_and_plan_says_who_holds_it(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, epochs=1)
    results, cache = str(tmp_path / "results"), str(tmp_path / "cache")
    holder = hold(str(tmp_path / "results" / "long"))
    try:
        planned = gridrun("plan", str(suite), "--results", results, "--cache", cache)
        assert planned.returncode == 0 and f"is in use by another gridrun (pid {holder.pid} on" in planned.stdout
        cmd = [sys.executable, "-m", "runner", "run", str(suite), "--results", results, "--cache", cache, "--wait"]
        waiting = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        assert waiting.poll() is None, waiting.stdout.read()
        assert not job_dir(tmp_path).exists(), "nothing is written while another driver holds the folder"
    finally:
        holder.kill()
        holder.wait()
    out, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, out
    assert "waiting for" in out and f"pid {holder.pid}" in out
    assert (job_dir(tmp_path) / "result.json").is_file()
