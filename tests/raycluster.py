"""Test helper: a real Ray cluster of `ray start` processes on 127.0.0.1, stopped by process id.

    cluster = RayCluster(tmp_path, token="...")
    cluster.start_head(cpus=0, gpus=0)
    cluster.start_worker(cpus=1, gpus=1, env={"GRIDRUN_SHARED_RESULTS": "0"})
    ...
    cluster.stop()

Every port is picked free, everything lives under its own temp folder (short: Ray's socket paths are
limited), HOME points inside it (so no token of the machine's user is picked up, and ~ on the "cluster" is
the test's), and only the processes of this cluster are ever killed: never `ray stop`, which stops every
Ray on the machine.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
# Fast node-death detection: the head's GCS checks each raylet every half second.
HEAD_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process readable in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry)] = (ppid, cmd)
    return out


def kill_trees(match) -> int:
    """SIGKILL every process whose command line satisfies `match`, and all their descendants."""
    procs = _processes()
    doomed = {pid for pid, (_, cmd) in procs.items() if match(cmd) and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= children
        grew = bool(children)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(doomed)


@dataclass
class RayNode:
    node_manager_port: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RayCluster:
    root: Path
    token: str | None = None
    temp: Path = field(init=False)
    home: Path = field(init=False)
    gcs_port: int = 0
    dashboard_port: int = 0
    client_port: int = 0
    head: RayNode | None = None
    workers: list[RayNode] = field(default_factory=list)
    hidden: Path | None = None  # a folder the worker nodes do not see, when they could be given one

    def __post_init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="grray-", dir="/tmp"))
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def jobs_api(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def base_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HOME": str(self.home),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",  # jobs' `python` is this environment's
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token" if self.token else "disabled",
        }
        for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
            env.pop(var, None)
        if self.token:
            env["RAY_AUTH_TOKEN"] = self.token
        return env

    def _command(self, cpus: float, gpus: int, resources: str | None, labels: str | None) -> tuple[list[str], int]:
        nm = free_port()
        cmd = [str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        cmd += ["--num-cpus", f"{cpus:g}", "--num-gpus", str(gpus), "--object-store-memory", str(80 * 2**20)]
        cmd += ["--node-manager-port", str(nm), "--object-manager-port", str(free_port())]
        cmd += ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port())]
        cmd += ["--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        cmd += ["--min-worker-port", "0", "--max-worker-port", "0"]
        if resources:
            cmd += ["--resources", resources]
        if labels:
            cmd += ["--labels", labels]
        return cmd, nm

    def can_hide(self) -> bool:
        """Whether worker nodes can get a mount namespace of their own here (root and unshare)."""
        probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
        return os.geteuid() == 0 and probe.returncode == 0

    def start_head(self, cpus: float = 1, gpus: int = 0, env: dict | None = None) -> None:
        for tries_left in (1, 0):  # on a loaded machine `ray start --head` can time out waiting for its GCS
            cmd, nm = self._command(cpus, gpus, None, None)
            self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
            cmd += ["--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp)]
            cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
            cmd += ["--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(self.client_port)]
            proc = subprocess.run(
                cmd, env={**self.base_env(), **HEAD_ENV, **(env or {})}, capture_output=True, text=True, timeout=180
            )
            if proc.returncode == 0:
                break
            kill_trees(lambda c: str(self.temp) in c)  # what the failed start left, before trying again
            assert tries_left, proc.stdout[-3000:] + proc.stderr[-3000:]
        self.head = RayNode(nm, env or {})

    def start_workers(self, specs: list[dict]) -> list[RayNode]:
        """Start worker nodes one after the other; each spec: cpus, gpus, resources (JSON), labels, env, and
        hide: a folder the node must not see (a node of another machine, without that disk)."""
        nodes = []
        for spec in specs:
            for tries_left in (1, 0):  # on a loaded machine `ray start` can time out waiting for the GCS
                cmd, nm = self._command(
                    spec.get("cpus", 1), spec.get("gpus", 0), spec.get("resources"), spec.get("labels")
                )
                cmd += ["--address", self.address]
                if spec.get("hide"):  # the node's own mount namespace, an empty tmpfs over this folder
                    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs gridrun-test "$0" && exec "$@"', str(spec["hide"]), *cmd]  # fmt: skip
                node = RayNode(nm, spec.get("env", {}))
                proc = subprocess.run(
                    cmd, env={**self.base_env(), **node.env}, capture_output=True, text=True, timeout=180
                )
                if proc.returncode == 0:
                    break
                self.kill_node(node)
                assert tries_left, proc.stdout[-3000:] + proc.stderr[-3000:]
            nodes.append(node)
        self.workers += nodes
        return nodes

    def kill_node(self, node: RayNode) -> int:
        """What a machine's death looks like to Ray: its raylet and everything under it gone at once."""
        return kill_trees(
            lambda cmd: "raylet/raylet " in cmd and f"--node_manager_port={node.node_manager_port} " in cmd
        )

    def kill_head(self) -> int:
        """The head's GCS and raylet gone (and all below them): the cluster has lost its head."""
        gcs = kill_trees(lambda cmd: "gcs_server " in cmd and str(self.temp) in cmd)
        return gcs + self.kill_node(self.head)

    @contextlib.contextmanager
    def pretend_release(self, ray_version: str, python_version: str):
        """While inside: the cluster says it runs another Ray and Python release (the versions its head
        recorded in the GCS, which every driver checks when it attaches). Test-only, so Ray's private GCS
        client: Ray has no public way to start a cluster of another release here."""
        recorded = self._cluster_metadata()
        self._cluster_metadata({**recorded, "ray_version": ray_version, "python_version": python_version})
        try:
            yield
        finally:
            self._cluster_metadata(recorded)

    def _cluster_metadata(self, new: dict | None = None) -> dict:
        code = (
            "import json, sys\n"
            "from ray._raylet import GcsClient\n"
            "gcs = GcsClient(address=sys.argv[1])\n"
            "key, ns = b'CLUSTER_METADATA', b'cluster'\n"
            "if len(sys.argv) > 2:\n"
            "    gcs.internal_kv_put(key, sys.argv[2].encode(), overwrite=True, namespace=ns)\n"
            "print(gcs.internal_kv_get(key, namespace=ns).decode())\n"
        )
        cmd = [sys.executable, "-c", code, self.address, *([json.dumps(new)] if new is not None else [])]
        proc = subprocess.run(cmd, env=self.base_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill every process of this cluster (all carry its temp folder in their command line)."""
        for _ in range(3):
            if not kill_trees(lambda cmd: str(self.temp) in cmd):
                break
            time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)
