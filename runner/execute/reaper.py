"""A watchdog that outlives whatever it guards, however that ends (SIGKILL, out of memory), and removes
what it left behind.

    python -m runner.execute.reaper run <run id>          # guards a driver: its processes and containers
    python -m runner.execute.reaper container <id>        # guards one container's Ray worker

The guarded process holds the write end of the watchdog's stdin; the kernel closes it when that process
ends, so the watchdog learns of every death, a SIGKILL included, without polling. A driver's processes are
found by a mark in their environment, which every process it starts (Ray's own, Ray's workers, gridrun's
workers) inherits; its containers by their `gridrun.run_id` label. Standard library only, except the Docker
SDK when a container is to be removed.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "GRIDRUN_RUN_MARK"  # in the environment of every process a driver starts: <run id>
GRACE_S = 1.0  # the pipe closes once the guarded process has exited: its own clean-up (ray.shutdown) is over
TERM_S = 5.0


def _spawn(*args: str) -> subprocess.Popen[bytes] | None:
    env = {k: v for k, v in os.environ.items() if k != MARK}  # the watchdog must not carry the mark it sweeps
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "runner.execute.reaper", *args],
            stdin=subprocess.PIPE,  # non-inheritable: only this process holds the write end
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
            start_new_session=True,  # not in the terminal's process group: Ctrl-C and SIGHUP do not reach it
        )
    except OSError:  # no watchdog: the orderly paths still clean up
        return None


_guards: list[subprocess.Popen[bytes]] = []  # kept referenced: their pipes stay open until this process ends


def guard_run(run_id: str) -> None:
    """Mark this process (and so all it starts from now on) as run `run_id`'s, and start its watchdog."""
    if os.environ.get(MARK) == run_id:
        return
    proc = _spawn("run", run_id)
    if proc is not None:
        _guards.append(proc)
    os.environ[MARK] = run_id


def guard_container(container_id: str) -> subprocess.Popen[bytes] | None:
    """A watchdog that removes the container once this process is gone; `release` it when done."""
    return _spawn("container", container_id)


def release(proc: subprocess.Popen[bytes] | None) -> None:
    """End a container's watchdog without it removing anything (the container was removed in order)."""
    if proc is None:
        return
    with contextlib.suppress(OSError):
        proc.kill()
        proc.wait(timeout=5)


def marked(run_id: str) -> list[int]:
    """Pids of the processes carrying run `run_id`'s mark (Linux: /proc; elsewhere none are found)."""
    needle = f"{MARK}={run_id}".encode()
    # A warm server's environment no longer shows the mark once setproctitle has taken its room; its command
    # line names its run (runner.execute.warm.server_file), and its workers die with it (PR_SET_PDEATHSIG).
    server = b"runner.execute.warm serve "
    name = f"/{run_id}-".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            env = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone, or not ours to read
            continue
        ours = needle in env.split(b"\0") or (server in cmdline and name in cmdline)
        if ours and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def sweep(run_id: str) -> tuple[int, int]:
    """SIGTERM, then SIGKILL, every process of the run; remove its containers. (processes, containers)."""
    pids = marked(run_id)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_S
    while time.monotonic() < deadline and marked(run_id):
        time.sleep(0.2)
    for pid in marked(run_id):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(pids), _remove_containers({"label": f"gridrun.run_id={run_id}"})


def _remove_containers(filters: dict[str, str]) -> int:
    try:
        import docker

        client = docker.from_env(timeout=10)
        containers = client.containers.list(all=True, filters=filters)
    except Exception:  # no SDK or no daemon: then there are no containers of ours either
        return 0
    removed = 0
    for container in containers:
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed += 1
    return removed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("run", "container"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, what = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(65536):  # returns b"" once the guarded process is gone
            pass
    time.sleep(GRACE_S)
    if kind == "run":
        sweep(what)
    else:
        _remove_containers({"id": what})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
