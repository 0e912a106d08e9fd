"""The Ray cluster: an embedded local instance by default, or an existing one by address.

Attaching to a cluster is where security is decided: the token comes from RAY_AUTH_TOKEN or the file that
RAY_AUTH_TOKEN_PATH names (Ray's own variables), and a cluster that is not on this machine is never sent work
without one unless the user says --insecure. The token itself is never printed; the one file gridrun writes a
token to is the embedded Ray's ~/.ray/auth_token, created 0600. The embedded Ray listens on 127.0.0.1 alone.

The scheduler side of gridrun: it never imports a framework.
"""

import contextlib
import ipaddress
import json
import logging
import os
import queue
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from runner.errors import Stopped, UserError
from runner.execute import reaper
from runner.plan.nodes import Node
from runner.schedule import head as kept_head

CLIENT_PORT = 10001  # Ray Client's default port on the head
# Ray's driver exits by itself when the GCS stays away this long; gridrun notices a lost head sooner
# (runner.schedule.driver) and needs the process alive to record it.
GCS_RECONNECT_S = 600
# Ray takes the embedded instance's node address from here, once, when it is imported: with multi-node
# clusters off it is the loopback address, and every server Ray starts (GCS, raylet and object manager,
# dashboard and runtime-env agents, metrics export, the driver's and workers' gRPC) binds to it alone.
# `_node_ip_address="127.0.0.1"` does not do it: Ray replaces a loopback node address with the machine's.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
INSECURE_RISK = (
    "an unauthenticated Ray cluster runs any code that anyone who reaches it sends (CVE-2023-48022), "
    "including on the machines that hold your data"
)


@dataclass(frozen=True)
class Cluster:
    """A connected Ray cluster."""

    address: str  # "local" for the embedded instance
    nodes: list[Node]
    probe: tuple[str, int] | None = None  # host and port that answer while the head is up
    kept: bool = False  # the kept local head of `gridrun up`

    @property
    def embedded(self) -> bool:
        return self.address == "local"

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        if self.kept:
            where = f"{kept_head.KEPT} at {self.address}"
        else:
            where = "embedded local Ray" if self.embedded else f"Ray cluster at {self.address}"
        cpus = sum(n.cpus for n in self.nodes)
        return f"{where}: {len(self.nodes)} node(s), {cpus:g} CPUs, {self.gpus:g} GPUs"


_current: Cluster | None = None


def current() -> Cluster | None:
    """The cluster `connect` attached to in this process, if any."""
    return _current


# --- the token ---------------------------------------------------------------------------------


def default_token_path() -> Path:
    """Ray's own token file, used when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set."""
    return Path.home() / ".ray" / "auth_token"


_warned_open: set[str] = set()


def check_private(path: Path) -> bool:
    """Whether only its owner can use the token file `path`; if not, one warning (once per file) with the fix."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return True  # nothing there to leak; a missing file has its own message
    if not mode & 0o077:
        return True
    if str(path) not in _warned_open:
        _warned_open.add(str(path))
        print(
            f"warning: the Ray token file {path} is open to other users (mode {mode:04o}): anyone on this machine "
            f"can read the token and run code on the cluster with it. Fix: chmod 600 {path}",
            file=sys.stderr,
        )
    return False


def auth_token() -> str | None:
    """Ray's token: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH names, else (with RAY_AUTH_MODE=token)
    Ray's default file ~/.ray/auth_token. None when there is none. A file others can read is warned about."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    default = default_token_path()
    if not named and os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and default.is_file():
        named = str(default)
    if not named:
        return None
    check_private(Path(named).expanduser())
    try:
        token = Path(named).expanduser().read_text().strip()
    except OSError as e:
        raise UserError(
            f"RAY_AUTH_TOKEN_PATH names {named}, which cannot be read ({e.strerror or e}). "
            "Fix: point it at the file holding the cluster's token, or set RAY_AUTH_TOKEN."
        ) from None
    if not token:
        raise UserError(f"the token file {named} is empty. Fix: put the cluster's token in it.")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(address: str, host: str, token: str | None, insecure: bool) -> None:
    """Refuse to send work unauthenticated to a cluster beyond this machine, unless --insecure."""
    if token is not None or is_loopback(host):
        return
    if insecure:
        print(f"warning: --insecure: using the Ray cluster at {address} without a token", file=sys.stderr)
        return
    raise UserError(
        f"refusing to use the Ray cluster at {address} without a token: {INSECURE_RISK}. "
        "Fix: start the cluster with RAY_AUTH_MODE=token and give gridrun the same token in RAY_AUTH_TOKEN "
        "or in a file named by RAY_AUTH_TOKEN_PATH; only on a network you fully trust, pass --insecure."
    )


def token_refused(address: str, token: str | None) -> UserError:
    """The message for a cluster that rejected our token, or wanted one we did not have."""
    if token is None:
        return UserError(
            f"the Ray cluster at {address} requires a token (token authentication is on) and none was given. "
            "Fix: set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it."
        )
    return UserError(
        f"the Ray cluster at {address} refused the token (from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH). "
        "Fix: use the token the cluster was started with (`ray get-auth-token` on the head prints it)."
    )


# --- versions ----------------------------------------------------------------------------------

_MISMATCH = re.compile(
    r"cluster was started with:\s*Ray: (?P<ray>\S+)\s*Python: (?P<py>\S+).*?"
    r"was started with:\s*Ray: (?P<my_ray>\S+)\s*Python: (?P<my_py>\S+)",
    re.S,
)


def version_problem(address: str, error: str) -> UserError | None:
    """A clear message from Ray's 'Version mismatch' error text, or None when it is not one."""
    m = _MISMATCH.search(error)
    if not m:
        return None
    return UserError(
        f"the Ray cluster at {address} runs Ray {m['ray']} with Python {m['py']}; this gridrun runs Ray "
        f"{m['my_ray']} with Python {m['my_py']}, and a Ray driver must match its cluster. Fix: run gridrun "
        f"from a Python {m['py']} environment with `pip install 'ray[default]=={m['ray']}'`, or upgrade the "
        f"cluster to Ray {m['my_ray']} (Python {m['my_py']})."
    )


# --- attaching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A parsed --address: auto, a GCS host:port, or Ray Client's ray://host:port."""

    kind: str  # auto, gcs or client
    address: str
    host: str = ""
    port: int = 0


def parse_address(address: str) -> Target:
    if address == "auto":
        return Target("auto", address, "127.0.0.1")
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"--address {address} is a Jobs API (dashboard) address; `run` attaches to the cluster itself. "
            f"Fix: `gridrun submit <suite> --address {address}` sends the suite as a Ray Job, or give `run` "
            "the head's GCS address (host:6379), ray://host:10001 or auto."
        )
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname or not parsed.port:
        raise UserError(
            f"--address {address!r} is not host:port, ray://host:port or auto. Fix: e.g. --address 127.0.0.1:6379."
        )
    return Target("client" if parsed.scheme == "ray" else "gcs", address, parsed.hostname, parsed.port)


def check_reachable(
    address: str,
    host: str,
    port: int,
    timeout: float = 5.0,
    fix: str = "check the address and port, start one with `ray start --head`, or leave out --address to run "
    "on an embedded local Ray",
) -> None:
    """Fail fast with a clear message, where Ray alone would retry for a minute."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}). Fix: {fix}.") from None


# --- the preflight: one ray.init in a child process ------------------------------------------------

# The last resort: each failure gridrun knows is told by what Ray prints within seconds (a refused token,
# another release, nothing Ray-like at the address). A ray.init that has said nothing useful by then gives
# up; a loaded head can take tens of seconds to let a Ray Client in, so no shorter.
PREFLIGHT_S = 60.0
_MARK = "gridrun-preflight:"
# Run as `python -c`: attach as a driver exactly as gridrun will, and say how it went on one line.
_PREFLIGHT_CODE = """
import json, logging, sys, traceback
address, mark = sys.argv[1], sys.argv[2]
import ray
try:
    # DEBUG: Ray Client says why the server turned it away (a refused token) only at that level.
    ray.init(address=address, log_to_driver=False,
             logging_level=logging.DEBUG if address.startswith("ray://") else logging.WARNING)
except BaseException as e:
    text = "".join(traceback.format_exception(e))
    print(mark + json.dumps({"error": type(e).__name__, "message": str(e), "text": text}), flush=True)
    sys.exit(1)
print(mark + json.dumps({"ok": True}), flush=True)
ray.shutdown()
"""
# What Ray prints while it retries, each a verdict that needs no more waiting:
# the GCS (C++ core) and Ray Client's server turning a token away, ...
_REFUSED = re.compile(
    r"Unauthenticated|InvalidAuthToken|authentication token is missing or incorrect|"
    r"invalid or missing authentication token",
    re.I,
)
# ... nothing that speaks Ray's gRPC at a GCS address, or at a Ray Client address.
_SILENT = re.compile(r"Failed to connect to GCS at address \S+ within|Couldn't connect channel in")
_NO_LOCAL = "Could not find any running Ray instance"


@dataclass(frozen=True)
class Preflight:
    """What the child's ray.init said: `lines` it printed, its verdict (if it got to one), whether it timed out."""

    lines: list[str]
    result: dict | None = None
    timed_out: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _watch(cmd: list[str], env: dict[str, str], timeout: float) -> Preflight:
    """Run the child until it reports, Ray's output settles the question, or `timeout`; never leave it running."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,  # its own process group: killed as a whole, never by the user's Ctrl-C
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    result = None
    timed_out = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                timed_out = True
                break
            if line is None:
                break
            if line.startswith(_MARK):
                with contextlib.suppress(ValueError):
                    result = json.loads(line[len(_MARK) :])
                if result and result.get("ok"):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)  # its ray.shutdown: the driver leaves the cluster cleanly
                break
            seen.append(line)
            if _REFUSED.search(line) or _SILENT.search(line):
                break
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        if not reader.is_alive():
            proc.stdout.close()
    return Preflight(seen, result, timed_out)


def preflight_problem(target: Target, token: str | None, outcome: Preflight) -> UserError | None:
    """The one message for a preflight that did not connect, or None when it did."""
    result = outcome.result or {}
    if result.get("ok"):
        return None
    error, text = result.get("error", ""), result.get("text", "")
    everything = f"{outcome.text}\n{text}"
    if error == "AuthenticationError" or _REFUSED.search(everything):
        return token_refused(target.address, token)
    problem = version_problem(target.address, text)
    if problem is not None:
        return problem
    if target.kind == "auto" and _NO_LOCAL in everything:
        return UserError(
            "--address auto found no Ray cluster started on this machine. "
            "Fix: start one with `ray start --head`, or give its address."
        )
    if outcome.timed_out or _SILENT.search(everything) or "connection timeout" in text:
        why = f"no answer within {PREFLIGHT_S:g} s" if outcome.timed_out else "nothing there answers as Ray"
        if target.kind == "client":
            return UserError(
                f"the Ray Client server at {target.address} does not answer ({why}). "
                "Fix: check the address (the head's Ray Client port, 10001 unless changed)."
            )
        if target.kind == "auto":
            return UserError(
                "--address auto found a Ray cluster address on this machine ($RAY_ADDRESS, or the last cluster "
                f"`ray start` started here) that does not answer ({why}). Fix: start one with `ray start --head` "
                "(`ray stop` first clears a crashed one), or give its address."
            )
        return UserError(
            f"the Ray cluster at {target.address} does not answer as a Ray head ({why}). Fix: give the head's "
            "GCS address (host:6379 unless changed), ray://host:10001 for Ray Client, or auto."
        )
    message = result.get("message", "").strip()
    if message:
        said = f"{error}: {message.splitlines()[0]}" if error else message.splitlines()[0]
    else:
        said = next((ln.strip() for ln in reversed(outcome.lines) if ln.strip()), "the check ended without a word")
    if token:
        said = said.replace(token, "***")
    return UserError(
        f"cannot attach to the Ray cluster at {target.address}: {said[:300]}. "
        "Fix: check the address and that the cluster runs the same Ray version as this driver."
    )


def _traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(e))


def preflight(target: Target, token: str | None, timeout: float = PREFLIGHT_S) -> None:
    """Attach once from a short-lived child process, before this one does: a refused token, another Ray
    release or an address that does not answer is told in seconds, in one message, without Ray's retries
    (and their noise) in this process. The child carries this environment: RAY_AUTH_MODE and the token."""
    cmd = [sys.executable, "-c", _PREFLIGHT_CODE, target.address, _MARK]
    problem = preflight_problem(target, token, _watch(cmd, dict(os.environ), timeout))
    if problem is not None:
        raise problem


def _code_runtime_env() -> dict:
    """gridrun's own code travels to the nodes with the tasks, so nodes need only the libraries."""
    import runner
    import schemas

    return {
        "py_modules": [str(Path(runner.__file__).parent), str(Path(schemas.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
    }


def token_mode() -> bool:
    """RAY_AUTH_MODE=token when a token is given ($RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH): then Ray sends it on
    every connection. Ray reads RAY_AUTH_MODE once, when it is first imported, so this must run before anything
    imports ray: the CLI calls it first thing, `connect` again (for callers that are not the CLI). Whether Ray
    is, or will be once imported, in token mode."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        return True
    if not (os.environ.get("RAY_AUTH_TOKEN", "").strip() or os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()):
        return False
    if "ray" in sys.modules:  # too late: Ray has read its settings
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    return True


@contextlib.contextmanager
def _own_signals(hold: tuple[signal.Signals, ...] = ()) -> Iterator[None]:
    """Around ray.init: the driver's SIGINT, SIGTERM and SIGHUP handlers are its own again afterwards (Ray installs
    a SIGTERM handler that exits 15). `hold` is blocked meanwhile: the processes Ray starts inherit the block, so a
    terminal's Ctrl-C or SIGHUP (sent to its whole process group) reaches only the driver, which cancels the jobs
    in order; one that came during the start is delivered to the driver as soon as it is over."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, hold) if hold else None
    try:
        yield
    except SystemExit as e:  # Ray's own SIGTERM handler, while it was in place
        if e.code == signal.SIGTERM:
            raise Stopped(signal.SIGTERM) from None
        raise
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def local_token() -> None:
    """Token authentication for the embedded Ray, with a token file no other user can read.

    Unless RAY_AUTH_MODE says otherwise, Ray turns tokens on for a new local instance and, when none is given,
    writes ~/.ray/auth_token with the process's umask (0644: readable by everyone on the machine). gridrun writes
    that file first, 0600 from its creation, and says RAY_AUTH_MODE=token itself (Ray warns when it decides).
    A token gridrun is given (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) is used as it is. Call before importing ray."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        return  # set, and not to token (disabled, or empty): Ray uses no token
    if "ray" not in sys.modules:  # once imported, Ray decides the mode itself (token for a new instance)
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip() or os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip():
        auth_token()  # a named file that is missing, empty or open to others is told now
        return
    path = default_token_path()
    if path.exists():
        check_private(path)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates its file 0600; the link puts it in place whole, or not at all when another process
    # (a second gridrun, Ray) created the file in the meantime: a reader never sees an empty token.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def attach(address: str, insecure: bool = False) -> Target:
    """Checks, then ray.init on an existing cluster: token or --insecure, reachable, token accepted, same Ray."""
    target = parse_address(address)
    token = auth_token()
    require_token(address, target.host, token, insecure)
    if token is not None and not token_mode():  # a programming error, not a user's
        raise RuntimeError(
            "ray was imported before RAY_AUTH_MODE=token was set, so it would attach without the token: "
            "call runner.schedule.cluster.token_mode() before anything imports ray"
        )
    if target.kind != "auto":
        check_reachable(address, target.host, target.port)
    preflight(target, token)
    import ray

    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_S))
    try:
        with _own_signals():
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                runtime_env=_code_runtime_env(),
            )
    except Exception as e:  # the preflight passed: the cluster changed since, or something it could not see
        outcome = Preflight([], {"error": type(e).__name__, "message": str(e), "text": _traceback(e)})
        raise (preflight_problem(target, token, outcome) or UserError(str(e))) from None
    return target


def _say(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def connect(
    address: str | None = None,
    num_gpus: float | None = None,
    num_cpus: int | None = None,
    insecure: bool = False,
    run_id: str | None = None,
    kept: bool = True,
    say: Callable[[str], None] = _say,
) -> Cluster:
    """Start an embedded Ray (dashboard off, everything on 127.0.0.1, a private token) or attach to `address`;
    with no address and `kept`, attach to the kept head of `gridrun up` where one is up."""
    global _current
    token_mode()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        if "ray" not in sys.modules:  # Ray reads these when it is imported
            os.environ.update(LOOPBACK_ENV)
        local_token()
    import ray

    if ray.is_initialized():
        return _current or Cluster("local" if address is None else address, nodes())
    found = kept_head.find(say) if address is None and kept else None
    if found is not None:
        _current = _attach_kept(ray, found, num_gpus, num_cpus, run_id or uuid.uuid4().hex[:12])
        return _current
    if address is not None:
        target = attach(address, insecure)
        if target.kind == "client":
            probe = (target.host, target.port)
        else:
            host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
            probe = (host, int(port))
        _current = Cluster(address, nodes(), probe)
        return _current
    # A watchdog removes Ray's processes, the workers and containers should this driver die unannounced.
    reaper.guard_run(run_id or uuid.uuid4().hex[:12])
    with _own_signals(hold=(signal.SIGINT, signal.SIGHUP)):
        _init_local(ray, num_gpus, num_cpus)
    _current = Cluster("local", nodes())
    return _current


def _attach_kept(ray, found: kept_head.Head, num_gpus: float | None, num_cpus: int | None, run_id: str) -> Cluster:
    """Attach to the kept head: no Ray to start or stop. The run's processes carry its own mark, so that its
    watchdog and a later run's clean-up find them, and leave the head's alone."""
    if num_gpus is not None or num_cpus is not None:
        raise kept_head.declared_refused(found)
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (found.ray, found.python) != (ray.__version__, mine):
        raise UserError(
            f"the {found.describe()} runs Ray {found.ray} with Python {found.python}; this gridrun runs Ray "
            f"{ray.__version__} with Python {mine}, and a Ray driver must match its cluster. "
            "Fix: `gridrun down`, then `gridrun up` from this environment."
        )
    reaper.guard_run(run_id)
    # The head's workers have the environment `gridrun up` had: this command's own settings go with its jobs,
    # and its gridrun code (the same files, on the same machine: nothing to upload).
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k.startswith("GRIDRUN_")}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        with _own_signals():
            ray.init(
                address=found.address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": env},
            )
    except Exception as e:  # it answered a moment ago: stopped since, or changed
        said = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"cannot attach to the {found.describe()}: {said[:300]}. "
            "Fix: `gridrun down`, then `gridrun up` again (or leave it down: each command then starts its own Ray)."
        ) from None
    return Cluster(found.address, nodes(), ("127.0.0.1", found.port), kept=True)


def _init_local(ray, num_gpus: float | None, num_cpus: int | None) -> None:
    if not is_loopback(ray.util.get_node_ip_address()):  # a programming error, not a user's
        raise RuntimeError(
            "ray was imported before runner.schedule.cluster.connect() could set "
            f"{', '.join(f'{k}={v}' for k, v in LOOPBACK_ENV.items())}, so the embedded Ray would listen on this "
            "machine's network address: call connect() before anything imports ray, or set those variables first"
        )
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        # The driver only passes small outcomes through the object store.
        object_store_memory=128 * 1024 * 1024,
    )


def alive(cluster: Cluster, timeout: float = 2.0) -> bool:
    """Whether the head still answers (a TCP connect to its GCS or Ray Client port); True for embedded Ray."""
    if cluster.probe is None:
        return True
    try:
        with socket.create_connection(cluster.probe, timeout=timeout):
            return True
    except OSError:
        return False


def nodes() -> list[Node]:
    """Alive nodes and their total resources."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = dict(n.get("Resources", {}))
        out.append(
            Node(
                node_id=n["NodeID"],
                host=n.get("NodeManagerHostname") or n.get("NodeManagerAddress", ""),
                cpus=res.get("CPU", 0.0),
                gpus=res.get("GPU", 0.0),
                memory_gb=res.get("memory", 0.0) / 2**30,
                resources=res,
                labels=dict(n.get("Labels") or {}),
            )
        )
    return out


def shutdown() -> None:
    """Stop the embedded Ray or leave the cluster; nothing when Ray was never imported."""
    global _current
    _current = None
    # Not `import ray`: after a stop signal cut Ray's import short, importing it again fails on its half-loaded
    # parts. A Ray that is not imported, or whose import failed (so left sys.modules), has started nothing.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
