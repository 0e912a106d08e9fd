"""A kept local Ray head: `gridrun up` starts it, and every later command on this machine that names no cluster
attaches to it instead of starting and stopping an embedded Ray of its own (seconds a command), until
`gridrun down`.

    python -m runner.schedule.head serve <state folder> [--cpus N] [--gpus N]     # started by `gridrun up`

The head is the embedded Ray a command would start (127.0.0.1 alone, the private token, dashboard off), held
by a small daemon in its own session with its own watchdog: however the daemon ends, its Ray goes with it. The
daemon writes `head.json` (where the head listens, what it declares, which Ray and Python it runs) once the
head is up and removes it on its way out. A command that finds the file but no live head says so, removes it
and starts its own Ray.
"""

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.errors import Stopped, UserError
from runner.execute.reaper import MARK

STATE_ENV = "GRIDRUN_STATE_DIR"
START_S = 120.0  # a head that is not up by then (a loaded machine takes seconds) is given up on
STOP_S = 30.0
CHECK_S = 2.0  # how often the daemon checks that its Ray still answers
SETTLE_S = 8.0  # beyond a watchdog's grace and its SIGTERM wait (runner.execute.reaper)
MAX_STATE_BYTES = 64 * 1024
SERVE = "runner.schedule.head"
KEPT = "kept local Ray head (gridrun up)"  # how commands name it


def state_dir() -> Path:
    """Where the kept head's files live: $GRIDRUN_STATE_DIR, else $XDG_STATE_HOME/gridrun, else
    ~/.local/state/gridrun."""
    if os.environ.get(STATE_ENV, "").strip():
        return Path(os.environ[STATE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "gridrun"


@dataclass(frozen=True)
class Head:
    """What head.json says of a kept head."""

    address: str  # the GCS, host:port on 127.0.0.1
    pid: int  # the daemon
    cpus: float
    gpus: float
    ray: str  # Ray's version, which a driver must match
    python: str  # major.minor, which a driver must match
    started_at: float
    mark: str  # the run mark of the daemon's Ray processes (runner.execute.reaper)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def describe(self) -> str:
        return f"{KEPT} at {self.address}: {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def declared_refused(found: Head) -> UserError:
    """--gpus and --cpus given to a command that would use the kept head."""
    return UserError(
        f"--gpus and --cpus describe a Ray this command starts; the {found.describe()} has its own. "
        "Fix: drop them, or `gridrun down` and then `gridrun up` with them."
    )


def _state(folder: Path) -> Path:
    return folder / "head.json"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One `up`, `down` or clean-up of a stale file at a time."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(folder / "head.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise UserError(
            f"the kept head's state folder {folder} cannot be used ({e.strerror or e}). "
            f"Fix: set {STATE_ENV} to a folder of yours."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read(folder: Path) -> Head | str | None:
    """The recorded head; None when there is no file; a string saying why when the file is unusable."""
    path = _state(folder)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    try:
        if len(data) > MAX_STATE_BYTES:
            raise ValueError("too large")
        fields = json.loads(data)
        head = Head(**{k: fields[k] for k in Head.__dataclass_fields__})
        head.port  # noqa: B018 - an address without a port is unusable
    except (ValueError, KeyError, TypeError):
        return f"{path} is not a head file gridrun wrote"
    return head


def _daemon_alive(pid: int) -> bool:
    """Whether `pid` is a kept head's daemon (and not a process that reused its number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return f"{SERVE} serve".encode() in cmdline


def answers(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _why_dead(head: Head) -> str | None:
    if not _daemon_alive(head.pid):
        return f"its daemon (pid {head.pid}) is gone"
    if not answers(head.address):
        return f"nothing answers at {head.address}"
    return None


def find(say: Callable[[str], None], folder: Path | None = None) -> Head | None:
    """The live kept head, or None. A file that names none that lives is removed, and said so."""
    folder = folder or state_dir()
    found = read(folder)
    if found is None:
        return None
    why = found if isinstance(found, str) else _why_dead(found)
    if why is None:
        return found  # type: ignore[return-value]
    with _locked(folder):
        again = read(folder)
        if again == found or isinstance(again, str):
            _state(folder).unlink(missing_ok=True)
    say(f"the kept Ray head recorded in {_state(folder)} is gone ({why}): this command starts its own Ray")
    return None


def up(cpus: int | None, gpus: float | None, folder: Path | None = None) -> tuple[Head, bool]:
    """Start the kept head, or find the one already up: (the head, whether this call started it)."""
    folder = folder or state_dir()
    with _locked(folder):
        found = read(folder)
        if isinstance(found, Head) and _why_dead(found) is None:
            return found, False
        _state(folder).unlink(missing_ok=True)
        log = folder / "head.log"
        cmd = [sys.executable, "-m", SERVE, "serve", str(folder)]
        cmd += ["--cpus", str(cpus)] if cpus is not None else []
        cmd += ["--gpus", str(int(gpus))] if gpus is not None else []
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(Path(__file__).resolve().parents[2]),
                start_new_session=True,  # outlives this command; no terminal's Ctrl-C or SIGHUP reaches it
            )
        deadline = time.monotonic() + START_S
        try:
            while time.monotonic() < deadline:
                found = read(folder)
                if isinstance(found, Head) and found.pid == proc.pid:
                    return found, True
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        except BaseException:  # Ctrl-C while it starts: nothing is left half-up
            _end(proc.pid)
            raise
        how = "it exited" if proc.poll() is not None else f"not up within {START_S:g} s"
        _end(proc.pid)
        tail = _tail(log)
        if tail.startswith("error: "):  # the daemon's own one message, with its fix
            raise UserError(f"the kept Ray head did not start: {tail.removeprefix('error: ')} (its log: {log})")
        raise UserError(
            f"the kept Ray head did not start ({how}){': ' + tail if tail else ''}. "
            f"Fix: see {log}; without `gridrun up` each command starts its own Ray."
        )


def _tail(log: Path) -> str:
    """The last line the daemon wrote, cut to a message's length."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _end(pid: int, timeout: float = STOP_S) -> bool:
    """SIGTERM the daemon (it shuts its Ray down), then SIGKILL (its watchdog sweeps its Ray); whether it ended."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # a daemon this process started is its child until reaped
            if not _daemon_alive(pid):
                return True
            time.sleep(0.1)
    return not _daemon_alive(pid)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux: /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


def busy(found: Head) -> list[str]:
    """The runs that have jobs on the head now: its Ray workers carrying a run's mark, not the head's own (Ray
    ends a command's workers when the command leaves)."""
    runs = set()
    prefix = f"{MARK}=".encode()
    for pid in _descendants(found.pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        mark = next((v[len(prefix) :].decode(errors="replace") for v in env if v.startswith(prefix)), found.mark)
        if mark != found.mark:
            runs.add(mark)
    return sorted(runs)


def down(folder: Path | None = None, force: bool = False) -> Head | None:
    """Stop the kept head; the one stopped, or None when none was up. A head with jobs running is stopped only
    when `force`d."""
    folder = folder or state_dir()
    with _locked(folder):
        found = read(folder)
        if not isinstance(found, Head):
            _state(folder).unlink(missing_ok=True)
            return None
        alive = _daemon_alive(found.pid)
        running = busy(found) if alive else []
        # A command that has just ended leaves its workers for a second or two (Ray ends them, its watchdog
        # sweeps): only a run whose workers stay is running.
        deadline = time.monotonic() + SETTLE_S
        while running and time.monotonic() < deadline:
            time.sleep(0.25)
            running = busy(found)
        if running and not force:
            raise UserError(
                f"the {found.describe()} is running the jobs of {len(running)} command(s) (run "
                f"{', '.join(running[:5])}{', ...' if len(running) > 5 else ''}): stopping it would stop them. "
                "Nothing was stopped. Fix: wait for them to end, or `gridrun down --force`."
            )
        if alive and not _end(found.pid):
            raise UserError(
                f"the kept Ray head's daemon (pid {found.pid}) did not end. Fix: `kill -9 {found.pid}`, then "
                "`gridrun down` again."
            )
        _state(folder).unlink(missing_ok=True)
        return found if alive else None


# --- the daemon ----------------------------------------------------------------------------------


def _write_state(folder: Path, head: Head) -> None:
    """Whole or not at all: a reader never sees half a file."""
    tmp = folder / f".head.json.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(head), f)
    os.replace(tmp, _state(folder))


def serve(folder: Path, cpus: int | None, gpus: float | None) -> int:
    """Start an embedded Ray, record it, hold it until a stop signal or until it stops answering."""
    from runner.schedule import cluster

    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    def _stopped(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, _stopped)  # while Ray starts: the start is cut short, nothing is left
    try:
        connected = cluster.connect(None, num_gpus=gpus, num_cpus=cpus, run_id=f"head-{os.getpid()}", kept=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _stop)
    except (Stopped, KeyboardInterrupt):
        cluster.shutdown()
        return 143
    except UserError as e:  # `up` shows this line
        cluster.shutdown()
        print(f"error: {' '.join(str(e).split())}", flush=True)  # one line: `up` shows the last
        return 2
    import ray

    address = ray.get_runtime_context().gcs_address
    head = Head(
        address=address,
        pid=os.getpid(),
        cpus=sum(n.cpus for n in connected.nodes),
        gpus=connected.gpus,
        ray=ray.__version__,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        started_at=time.time(),
        mark=os.environ.get(MARK, ""),
    )
    _write_state(folder, head)
    print(f"up: {head.describe()}", flush=True)
    try:
        while not stop.wait(CHECK_S):
            if not answers(address):
                print(f"the head at {address} stopped answering: ending", flush=True)
                break
    finally:
        if read(folder) == head:
            _state(folder).unlink(missing_ok=True)
        cluster.shutdown()
    print("down", flush=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVE}")
    sub = parser.add_subparsers(dest="verb", required=True)
    serving = sub.add_parser("serve")
    serving.add_argument("folder", type=Path)
    serving.add_argument("--cpus", type=int)
    serving.add_argument("--gpus", type=int)
    args = parser.parse_args(argv)
    return serve(args.folder, args.cpus, args.gpus)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
