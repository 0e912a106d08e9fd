"""The Ray cluster: an embedded local instance by default, or an existing one by address.

Attaching to a cluster is where security is decided: the token comes from RAY_AUTH_TOKEN or the file that
RAY_AUTH_TOKEN_PATH names (Ray's own variables), and a cluster that is not on this machine is never sent work
without one unless the user says --insecure. The token itself is never printed or written anywhere.

The scheduler side of gridrun: it never imports a framework.
"""

import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from runner.errors import UserError
from runner.plan.nodes import Node

CLIENT_PORT = 10001  # Ray Client's default port on the head
# Ray's driver exits by itself when the GCS stays away this long; gridrun notices a lost head sooner
# (runner.schedule.driver) and needs the process alive to record it.
GCS_RECONNECT_S = 600
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

    @property
    def embedded(self) -> bool:
        return self.address == "local"

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        where = "embedded local Ray" if self.embedded else f"Ray cluster at {self.address}"
        cpus = sum(n.cpus for n in self.nodes)
        return f"{where}: {len(self.nodes)} node(s), {cpus:g} CPUs, {self.gpus:g} GPUs"


_current: Cluster | None = None


def current() -> Cluster | None:
    """The cluster `connect` attached to in this process, if any."""
    return _current


# --- the token ---------------------------------------------------------------------------------


def auth_token() -> str | None:
    """Ray's token: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH names, else (with RAY_AUTH_MODE=token)
    Ray's default file ~/.ray/auth_token. None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    default = Path.home() / ".ray" / "auth_token"
    if not named and os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and default.is_file():
        named = str(default)
    if not named:
        return None
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


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hold back what Ray's C++ core prints while probing (retry warnings): gridrun says it in one message."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _preflight_gcs(target: Target, token: str | None) -> None:
    """Ask the GCS once, before ray.init: a wrong token or another Ray version fails here in a second."""
    import ray
    from ray._common.usage.usage_lib import get_cluster_metadata
    from ray._private.utils import check_version_info
    from ray._raylet import GcsClient

    gcs = target.address
    if target.kind == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            gcs = canonicalize_bootstrap_address("auto")
        except Exception:  # Ray raises ConnectionError and others when it finds no address file
            gcs = None
        if not gcs:
            raise UserError(
                "--address auto found no Ray cluster started on this machine. "
                "Fix: start one with `ray start --head`, or give its address."
            )
    try:
        with _quiet_stderr():
            client = GcsClient(address=gcs, cluster_id=None)
            metadata = get_cluster_metadata(client)
    except ray.exceptions.AuthenticationError:
        raise token_refused(target.address, token) from None
    if metadata:
        try:
            check_version_info(metadata, "this machine")
        except RuntimeError as e:
            raise (version_problem(target.address, str(e)) or UserError(str(e))) from None


def _preflight_client(target: Target, token: str | None) -> None:
    """Ping Ray Client's server with the token: its own connect would wait 30 s and not say why."""
    if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
        return  # a TLS client server needs Ray's own channel set-up; ray.init reports its errors
    import grpc
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(f"{target.host}:{target.port}") as channel:
        stub = ray_client_pb2_grpc.RayletDriverStub(channel)
        try:
            stub.ClusterInfo(
                ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
                timeout=10,
                metadata=metadata,
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise token_refused(target.address, token) from None
            raise UserError(
                f"the Ray Client server at {target.address} does not answer ({e.code().name}). "
                "Fix: check the address (the head's Ray Client port, 10001 unless changed)."
            ) from None


def _code_runtime_env() -> dict:
    """gridrun's own code travels to the nodes with the tasks, so nodes need only the libraries."""
    import runner
    import schemas

    return {
        "py_modules": [str(Path(runner.__file__).parent), str(Path(schemas.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
    }


def _token_mode() -> None:
    """Have Ray's own loader send the token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) on every connection."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray read its settings when imported: read them again
    AuthenticationTokenLoader.instance().reset_cache()


def attach(address: str, insecure: bool = False) -> Target:
    """Checks, then ray.init on an existing cluster: token or --insecure, reachable, token accepted, same Ray."""
    import ray

    target = parse_address(address)
    token = auth_token()
    require_token(address, target.host, token, insecure)
    if token is not None:
        _token_mode()
    if target.kind != "auto":
        check_reachable(address, target.host, target.port)
    (_preflight_client if target.kind == "client" else _preflight_gcs)(target, token)
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_S))
    try:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env=_code_runtime_env(),
        )
    except Exception as e:  # Ray raises several types for an unusable cluster
        text = str(e)
        if isinstance(e, ray.exceptions.AuthenticationError) or "Unauthenticated" in text:
            raise token_refused(address, token) from None
        raise (
            version_problem(address, text)
            or UserError(
                f"cannot attach to the Ray cluster at {address}: {text.splitlines()[0] if text else type(e).__name__}. "
                "Fix: check the address and that the cluster runs the same Ray version as this driver."
            )
        ) from None
    return target


def connect(
    address: str | None = None, num_gpus: float | None = None, num_cpus: int | None = None, insecure: bool = False
) -> Cluster:
    """Start an embedded Ray (dashboard off, everything on 127.0.0.1) or attach to `address`."""
    import ray

    global _current
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return _current or Cluster("local" if address is None else address, nodes())
    if address is not None:
        target = attach(address, insecure)
        if target.kind == "client":
            probe = (target.host, target.port)
        else:
            host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
            probe = (host, int(port))
        _current = Cluster(address, nodes(), probe)
        return _current
    # Ctrl-C goes to the terminal's whole process group: Ray's own processes, started now, inherit
    # "ignore SIGINT" so that only the driver sees it and can cancel the jobs in order.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _init_local(ray, num_gpus, num_cpus)
    finally:
        signal.signal(signal.SIGINT, previous)
    _current = Cluster("local", nodes())
    return _current


def _init_local(ray, num_gpus: float | None, num_cpus: int | None) -> None:
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
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


def head_node_id() -> str | None:
    """The head's node id (it carries Ray's internal head resource)."""
    for n in nodes():
        if "node:__internal_head__" in n.resources:
            return n.node_id
    return None


def shutdown() -> None:
    global _current
    import ray

    _current = None
    if ray.is_initialized():
        ray.shutdown()
