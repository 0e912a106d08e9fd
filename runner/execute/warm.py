"""Warm starts for the process executor: a run's worker forked, fresh, from a process that has already imported
its framework, instead of a new interpreter importing it again (torch and torchvision: seconds a run).

    python -m runner.execute.warm serve <name> <framework>     # started on a node by the first run that needs it

The server imports the framework's trainer and nothing else of it: no tensor is made, no thread pool started,
no device opened. Each request forks one child that becomes the worker: its own session (a cancel kills its
group), its own environment exactly as a cold start would get it, its log on stdout and stderr; GPU memory and
framework state are the child's own, since CUDA and the pools start only after the fork. The server reports
the child's pid, then its exit status (negative: the signal), over the requester's connection; when that
connection closes first (the Ray worker that asked died), the child's group is killed, as PR_SET_PDEATHSIG
does for a cold start. The server ends after IDLE_S without children or requests, and with its run (the
driver's watchdog sweeps it by the run mark in its environment).

A framework whose runtime cannot be forked once imported (TensorFlow's starts threads) says so in the registry
(`Framework.forkable`) and starts cold; so do jobs with a `code:` folder, whose modules must be imported from
their own folder before anything else.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from runner.execute.base import die_with_parent

IDLE_S = 60.0  # a sweep asks again within seconds; a server holds about 1 GB
START_S = 120.0  # a server that does not listen by then (a cold import on a loaded node) is given up on
WARM_ENV = "GRIDRUN_WARM"  # "0": every run starts cold


def server_file(folder: Path, run_id: str, framework: str, node: int | None = None) -> Path:
    """The name of a run's server of a framework for one Ray node, in this node's folder: with .pid its pid,
    with .lock the lock of its start, with .log what it printed. Its socket is `address(...)` of that name.

    The node is the asking process's parent (a Ray worker's raylet): nodes that share a folder (several on one
    machine) have a server each, so a run never lives in another node's process tree."""
    return folder / f"{run_id}-{framework}-{os.getppid() if node is None else node}"


def address(name: Path) -> str:
    """An abstract socket (no file, so no path-length limit); both ends check that the other is this user."""
    return "\0gridrun-warm-" + hashlib.sha256(str(name).encode()).hexdigest()[:32]


def server_pid(folder: Path, run_id: str, framework: str, node: int | None = None) -> int | None:
    try:
        return int(server_file(folder, run_id, framework, node).with_suffix(".pid").read_text())
    except (OSError, ValueError):
        return None


def same_user(conn: socket.socket) -> bool:
    """Whether the process at the other end of `conn` runs as this user (Linux's SO_PEERCRED)."""
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return False
    return uid == os.getuid()


# --- the client: the process executor's side ----------------------------------------------------------


class WarmChild:
    """A worker forked by the server, waited for over the connection as a Popen is (pid, wait)."""

    def __init__(self, conn: socket.socket, pid: int, received: bytes = b"") -> None:
        self.conn, self.pid = conn, pid
        self.returncode: int | None = None
        self._buffer = received  # what the server sent after the pid

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; subprocess.TimeoutExpired after `timeout`, as Popen.wait."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("warm worker", timeout or 0)
            self.conn.settimeout(left)
            try:
                chunk = self.conn.recv(4096)
            except TimeoutError:
                raise subprocess.TimeoutExpired("warm worker", timeout or 0) from None
            if not chunk:  # the server died: its child, orphaned, must not go on alone
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.returncode = -signal.SIGKILL
                self.close()
                return self.returncode
            self._buffer += chunk
        self.returncode = int(json.loads(self._buffer.split(b"\n", 1)[0])["exit"])
        self.close()
        return self.returncode

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def _connect(name: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address(name))
    except OSError:
        conn.close()
        return None
    if not same_user(conn):  # another user's process took the name: never send it a run's environment
        conn.close()
        return None
    return conn


def _server_env() -> dict[str, str]:
    # Neither the cluster's token nor a run's own variables: each child gets its environment from its request.
    # Without SPT_NOENV (Ray sets it for its workers), a child's title may take the environment's room too: a
    # worker's command line is longer than its server's.
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN") and k != "SPT_NOENV"}


def connect(folder: Path, run_id: str, framework: str) -> socket.socket | None:
    """A connection to this node's server for (run, framework), started when there is none; None when it cannot
    be had (the caller starts the run cold)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = server_file(folder, run_id, framework)
    conn = _connect(path)
    if conn is not None:
        return conn
    prune(folder)
    # One starter at a time per node: the others wait on the lock, then find the server listening.
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:
            return conn
        server = _spawn(path, framework)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and server is not None and _running(server):
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.05)
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
        return None


STALE_S = 86_400.0  # a server's lock and log outlive it by this long (its log says why a start failed)


def prune(folder: Path, older_than_s: float = STALE_S) -> int:
    """Remove the lock and log files of servers long gone (no pid file, untouched for `older_than_s`): every
    run leaves one of each per framework and node. How many were removed."""
    removed, now = 0, time.time()
    for file in [*folder.glob("*.lock"), *folder.glob("*.log")]:
        with contextlib.suppress(OSError):  # gone already: another run pruned it
            if not file.with_suffix(".pid").exists() and now - file.stat().st_mtime > older_than_s:
                file.unlink()
                removed += 1
    return removed


# Run by a short-lived go-between, so that the server is nobody's child: Ray kills a worker's children when the
# worker exits (RAY_kill_child_processes_on_worker_exit), and the worker that started a server may end long
# before the runs the server forks for other workers.
_SPAWN = """
import subprocess, sys
log = open(sys.argv[1], "ab")
server = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                          start_new_session=True)
print(server.pid, flush=True)
"""


def _spawn(name: Path, framework: str) -> int | None:
    """Start the server of `name` through a go-between that exits at once; its pid, or None."""
    cmd = [sys.executable, "-c", _SPAWN, str(name.with_suffix(".log")),
           sys.executable, "-m", "runner.execute.warm", "serve", str(name), framework]  # fmt: skip
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_server_env(),
                              cwd=str(Path(__file__).resolve().parents[2]), timeout=60)  # fmt: skip
        return int(done.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not): it is not this process's child, so it cannot be waited for."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def start(conn: socket.socket, argv: list[str], env: dict[str, str], log: Path) -> WarmChild | None:
    """Ask the server for one worker; None when it does not answer with a pid (the caller starts cold)."""
    request = {"argv": argv, "env": env, "log": str(log), "cwd": os.getcwd()}
    try:
        conn.settimeout(30)
        conn.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while b"\n" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                raise OSError("the warm-start server closed the connection")
            reply += chunk
    except OSError:
        conn.close()
        return None
    first, rest = reply.split(b"\n", 1)
    return WarmChild(conn, int(json.loads(first)["pid"]), rest)


# --- the server --------------------------------------------------------------------------------------


def _become_worker(request: dict, keep: list[int], title: Any, server: int) -> None:
    """In the forked child: the worker's session, environment, streams and argv; runs it, then exits."""
    code = 1
    try:
        os.setsid()
        # A server killed outright (SIGKILL, the driver's watchdog) takes its children along: the title below
        # overwrites the run mark in this process's environment, so the watchdog would not find them itself.
        die_with_parent()
        if os.getppid() != server:  # it died before that took effect
            os._exit(1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for fd in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        # Unbuffered, as PYTHONUNBUFFERED gives a cold start: the log is whole up to a kill.
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from runner.train import worker

        sys.argv = [sys.executable, "-m", "runner.train.worker", *request["argv"]]
        if title is not None:  # ps and /proc show the worker's command line, not its server's
            title.setproctitle(" ".join(sys.argv))
        code = worker.main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: Path, framework: str) -> None:
    """Import the framework's trainer, listen at `path`'s address, fork a worker per request until idle."""
    from runner.train import frameworks, worker  # noqa: F401  (the imports are the point)

    frameworks.get(framework)
    try:  # set up before any fork: it finds the command line's memory from the environment it started with
        import setproctitle as title

        title.getproctitle()
    except ImportError:
        title = None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address(path))
    listener.listen(64)
    path.with_suffix(".pid").write_text(str(os.getpid()))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # pid -> the connection that asked for it
    pending: dict[socket.socket, bytes] = {}  # connections whose request is not whole yet
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    last = time.monotonic()
    try:
        while children or pending or time.monotonic() - last < IDLE_S:
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                if sock is listener:
                    conn, _ = listener.accept()
                    if not same_user(conn):  # only this user's runs are forked
                        conn.close()
                        continue
                    pending[conn] = b""
                    selector.register(conn, selectors.EVENT_READ)
                    continue
                assert isinstance(sock, socket.socket)
                chunk = b""
                with contextlib.suppress(OSError):
                    chunk = sock.recv(65536)
                owner = next((pid for pid, c in children.items() if c is sock), None)
                if owner is not None:  # a requester that closed (or wrote) while its worker runs: it is gone
                    if not chunk:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(owner, signal.SIGKILL)
                        selector.unregister(sock)
                    continue
                if not chunk:
                    selector.unregister(sock)
                    pending.pop(sock, None)
                    sock.close()
                    continue
                pending[sock] += chunk
                if b"\n" not in pending[sock]:
                    continue
                request = json.loads(pending.pop(sock).split(b"\n", 1)[0])
                keep = [listener.fileno(), selector.fileno(), *(c.fileno() for c in children.values()),
                        *(c.fileno() for c in pending)]  # fmt: skip
                server = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _become_worker(request, [*keep, sock.fileno()], title, server)
                children[pid] = sock
                with contextlib.suppress(OSError):
                    sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                sock = children.pop(pid, None)
                if sock is None:
                    continue
                with contextlib.suppress(OSError, KeyError, ValueError):
                    sock.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
                sock.close()
                last = time.monotonic()
            if pending or children:
                last = time.monotonic()
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            path.with_suffix(".pid").unlink()
        listener.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        raise SystemExit("usage: python -m runner.execute.warm serve <name> <framework>")
    serve(Path(sys.argv[2]), sys.argv[3])
