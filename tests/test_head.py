"""The kept local Ray head of `gridrun up` / `gridrun down`: real Ray, real commands, real kills.

Each test has a state folder of its own (GRIDRUN_STATE_DIR), so its head serves its own commands alone.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from test_survival import epoch, job_dir, left_behind, run_id, start, wait_for_epoch, write_suite

from runner.execute.reaper import marked
from runner.schedule import head

pytestmark = pytest.mark.runs  # starts Ray: not in `make test-fast`


def _env(state: Path) -> dict[str, str]:
    return {head.STATE_ENV: str(state)}


def _up(state: Path, *args: str) -> head.Head:
    done = gridrun("up", *args, env=_env(state))
    assert done.returncode == 0, done.stdout + done.stderr
    found = head.read(state)
    assert isinstance(found, head.Head), (done.stdout, found)
    return found


def _gone(pid: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or b"serve" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
        time.sleep(0.2)
    return False


def _down(state: Path) -> None:
    gridrun("down", "--quiet", "--force", env=_env(state))


def test_a_kept_head_serves_each_command_until_down_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        kept = _up(state, "--cpus", "2")
        assert kept.cpus == 2 and kept.gpus == 0 and kept.address.startswith("127.0.0.1:"), kept
        assert marked(kept.mark), "the head's Ray processes carry its mark"
        assert (state / "head.json").stat().st_mode & 0o077 == 0
        again = gridrun("up", env=_env(state))
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
        assert head.read(state) == kept, "a second `up` starts no second head"

        suite = write_suite(tmp_path, epochs=1)
        args = ("run", str(suite), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"))
        done = gridrun(*args, "--no-report", env=_env(state))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"kept local Ray head (gridrun up) at {kept.address}" in done.stdout, done.stdout
        assert "embedded local Ray" not in done.stdout
        assert json.loads((job_dir(tmp_path) / "status.json").read_text())["state"] == "succeeded"
        assert head.read(state) == kept and head.answers(kept.address), "the head outlives the command"

        # --cpus / --gpus would be silently ignored by a head that has its own: refused, before anything.
        refused = gridrun(*args[:2], "--results", str(tmp_path / "other"), "--cpus", "1", env=_env(state))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "--gpus and --cpus describe a Ray this command starts" in refused.stderr
        assert "gridrun down" in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "other").exists()

        # Right after a command, its workers may still be ending: `down` does not take them for running jobs.
        done = gridrun(*args, "--no-report", "--force", env=_env(state))
        assert done.returncode == 0, done.stdout + done.stderr
        stopped = gridrun("down", env=_env(state))
        assert stopped.returncode == 0 and f"stopped the kept local Ray head (gridrun up) at {kept.address}" in (
            stopped.stdout
        ), stopped.stdout + stopped.stderr
        assert _gone(kept.pid) and marked(kept.mark) == [] and not (state / "head.json").exists()
        assert _carrying(state) == [], "nothing the head or the command started is left"
        assert left_behind(run_id(tmp_path)) == [], "the run's workers and warm server end with it"
        none = gridrun("down", env=_env(state))
        assert none.returncode == 0 and "no kept Ray head is up" in none.stdout
    finally:
        _down(state)


def test_a_killed_head_is_swept_and_the_next_command_starts_its_own_ray(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        kept = _up(state)
        os.kill(kept.pid, signal.SIGKILL)  # no clean-up of its own: its watchdog sweeps its Ray
        assert left_behind(kept.mark) == [], "the head's Ray ends with its daemon"
        suite = write_suite(tmp_path, epochs=1)
        done = gridrun("run", str(suite), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "c"),
                       "--no-report", env=_env(state))  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "the kept Ray head recorded in" in done.stdout and f"its daemon (pid {kept.pid}) is gone" in done.stdout
        assert "embedded local Ray" in done.stdout and not (state / "head.json").exists()
    finally:
        _down(state)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"address": "127.0.0.1"}', b"[]", b"x" * (head.MAX_STATE_BYTES + 10)],
    ids=["garbage", "no-port", "not-an-object", "huge"],
)
def test_an_unusable_head_file_is_named_and_set_aside(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "head.json").write_bytes(content)
    said: list[str] = []
    assert head.find(said.append, state) is None
    assert len(said) == 1 and "is not a head file gridrun wrote" in said[0] and "starts its own Ray" in said[0]
    assert not (state / "head.json").exists()
    assert head.down(state) is None


def test_a_head_file_naming_a_live_process_that_is_no_head_is_not_trusted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fake = head.Head("127.0.0.1:1", os.getpid(), 1, 0, "2.0", "3.11", 0.0, "x")
    (state / "head.json").write_text(json.dumps(fake.__dict__))
    said: list[str] = []
    assert head.find(said.append, state) is None
    assert f"its daemon (pid {os.getpid()}) is gone" in said[0]
    assert head.down(state) is None and not (state / "head.json").exists(), "nothing is signalled but a head"


def test_a_driver_killed_on_the_kept_head_leaves_its_jobs_swept_and_the_head_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        kept = _up(state)
        suite = write_suite(tmp_path, epochs=300)
        driver = start(tmp_path, suite, _env(state))
        try:
            wait_for_epoch(tmp_path, driver, 1)
            run = run_id(tmp_path)
            assert marked(run), "the run's processes carry its own mark, not the head's"
            held = gridrun("down", env=_env(state))
            assert held.returncode == 2, held.stdout + held.stderr
            assert f"is running the jobs of 1 command(s) (run {run})" in held.stderr and "--force" in held.stderr
            assert head.answers(kept.address) and driver.poll() is None, "nothing was stopped"
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        assert left_behind(run) == [], "the killed driver's workers are swept by its watchdog"
        at_kill = epoch(tmp_path)
        time.sleep(2)
        assert epoch(tmp_path) == at_kill, "nothing trains the job any more"
        assert head.answers(kept.address) and marked(kept.mark), "the head is untouched"
    finally:
        _down(state)


def test_up_refuses_what_ray_cannot_declare_before_starting_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for args in (("--cpus", "0"), ("--gpus", "1.5")):
        done = gridrun("up", *args, env=_env(state))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "is not a number of" in done.stderr and "Fix:" in done.stderr and "Traceback" not in done.stderr
        assert not (state / "head.json").exists()


def test_two_ups_at_once_keep_one_head(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "runner", "up"]
    env = {**os.environ, **_env(state)}
    try:
        ups = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=180)[0] for p in ups]
        assert [p.returncode for p in ups] == [0, 0], outs
        assert sorted(o.split(":")[0] for o in outs) == ["already up", "up"], outs
        kept = head.read(state)
        assert isinstance(kept, head.Head)
        daemons = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _serving(p, state)]
        assert daemons == [kept.pid], "one daemon"
    finally:
        _down(state)


def test_an_up_stopped_while_its_head_starts_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, **_env(state)}
    try:
        up = subprocess.Popen([sys.executable, "-m", "runner", "up"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while len(_carrying(state, within=0)) < 3 and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.05)  # until Ray's first processes run beside `up` and its daemon: Ray is half up
        up.send_signal(signal.SIGTERM)
        out, errs = up.communicate(timeout=60)
        if up.returncode == 0:
            pytest.skip("the head was up before the signal came")
        assert up.returncode == 143 and "stopped by SIGTERM" in errs and "Traceback" not in errs, out + errs
        assert not (state / "head.json").exists()
        assert _carrying(state) == [], "neither the daemon nor any Ray process it started is left"
    finally:
        _down(state)


def _carrying(state: Path, within: float = 30) -> list[int]:
    """The processes started with this test's state folder (`up`'s daemon and all it started), after `within`
    seconds at most (a watchdog sweeps a few seconds in)."""
    needle = f"{head.STATE_ENV}={state}".encode()
    deadline = time.monotonic() + within
    while True:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _serving(proc: Path, state: Path) -> bool:
    """Whether /proc/<pid> `proc` is a kept head's daemon for `state`."""
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"runner.schedule.head serve " + str(state).encode() in cmdline


def test_a_state_folder_that_cannot_be_used_is_one_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = gridrun("up", env=_env(blocker / "state"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the kept head's state folder {blocker / 'state'} cannot be used" in done.stderr
    assert "GRIDRUN_STATE_DIR" in done.stderr and "Traceback" not in done.stderr


def test_a_head_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    outside = tmp_path / "elsewhere.json"
    fake = head.Head("127.0.0.1:1", 1, 1, 0, "2.0", "3.11", 0.0, "x")
    outside.write_text(json.dumps(fake.__dict__))
    (state / "head.json").symlink_to(outside)
    said: list[str] = []
    assert head.find(said.append, state) is None
    assert "cannot be read" in said[0] and not (state / "head.json").is_symlink()
    assert outside.read_text() == json.dumps(fake.__dict__), "what the link pointed at is untouched"


def test_a_head_that_cannot_start_says_why_in_one_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = tmp_path / "no-token-here"
    done = gridrun("up", env={**_env(state), "RAY_AUTH_TOKEN_PATH": str(missing)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the kept Ray head did not start: RAY_AUTH_TOKEN_PATH names {missing}" in done.stderr, done.stderr
    assert "Fix:" in done.stderr and "Traceback" not in done.stderr
    assert not (state / "head.json").exists() and _carrying(state) == []
