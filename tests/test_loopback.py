"""The embedded Ray listens on loopback only, and its token file is the owner's alone.

The embedded Ray is started exactly as gridrun starts it (runner.schedule.cluster.connect) in a child process
that runs one task, so that workers exist; every TCP socket that child and its descendants (GCS, raylet,
agents, workers) listen on is read from /proc.
"""

import ipaddress
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from jobhelp import descendants

from runner.schedule import cluster

pytestmark = pytest.mark.runs  # starts Ray: not in `make test-fast`

# Processes of the embedded Ray that listen, by a piece of their command line; the last two open their
# metrics ports seconds after ray.init returns.
KINDS = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "dashboard/dashboard.py", "monitor.py")
# Those that must be found; the head's dashboard.py and monitor.py open their metrics ports late (or, on a loaded
# machine, not within the wait): every socket found is checked, but their absence fails nothing.
REQUIRED = KINDS[:4]
SETTLE_S = 45.0

# The child: start the embedded Ray, run a task, report, and hold the cluster until stdin closes.
EMBEDDED = """
import json, os, sys
from runner.schedule import cluster
cluster.connect(num_cpus=1, num_gpus=0)
import ray

@ray.remote
def pid():
    return os.getpid()

print(json.dumps({"driver": os.getpid(), "worker": ray.get(pid.remote())}), flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def _address(hex_address: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6}: the IP as 32-bit words in host order, the port in hex."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f">{len(words)}I", *words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(port_hex, 16)


def _listening() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket of this machine (its namespace), by inode."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found[int(fields[9])] = _address(fields[1])
    return found


def _sockets_of(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The embedded Ray of a child started in a home of its own (no ~/.ray yet) with umask 022, while it runs:
    its pids, what each of its processes listens on, and the home."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ENABLE_WINDOWS"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=60)
            pytest.fail(f"the embedded Ray did not start: {proc.stderr.read()}")
        pids = json.loads(line)
        deadline = time.monotonic() + SETTLE_S
        while True:  # until every kind of Ray process listens (or the deadline: the test then says which not)
            listening = _listening()
            sockets = [
                (pid, _name(pid), *listening[inode])
                for pid in descendants(pids["driver"])
                for inode in _sockets_of(pid)
                if inode in listening
            ]
            names = " ".join(name for _, name, _, _ in sockets)
            if all(kind in names for kind in KINDS) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        yield {"pids": pids, "sockets": sockets, "home": home}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_every_port_of_the_embedded_ray_is_on_loopback(embedded: dict) -> None:
    sockets = embedded["sockets"]
    table = "\n".join(f"  {pid:>7} {ip}:{port}  {name[:120]}" for pid, name, ip, port in sockets)
    # The list covers every kind of Ray process, the driver and the task's worker, not just a few of them.
    names = " ".join(name for _, name, _, _ in sockets)
    for kind in REQUIRED:
        assert kind in names, f"no listening socket of {kind} found:\n{table}"
    pids = {pid for pid, _, _, _ in sockets}
    assert embedded["pids"]["driver"] in pids, f"the driver's core worker does not listen?\n{table}"
    assert embedded["pids"]["worker"] in pids, f"the task's worker does not listen?\n{table}"
    exposed = [s for s in sockets if not _is_loopback(s[2])]
    assert not exposed, "the embedded Ray listens beyond loopback:\n" + table


def test_the_embedded_rays_token_file_is_created_private(embedded: dict) -> None:
    token = embedded["home"] / ".ray" / "auth_token"
    assert token.is_file(), "token authentication is off, or its token lives elsewhere"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text().strip()) == 64


def test_an_existing_token_file_others_can_read_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("a" * 64)
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    cluster.local_token()
    cluster.local_token()
    err = capsys.readouterr().err
    assert err.count(f"Fix: chmod 600 {token}") == 1, err
    assert "mode 0644" in err
    assert token.read_text() == "a" * 64, "the user's token is kept"


def test_a_token_file_named_by_ray_auth_token_path_that_others_can_read_is_warned_about(tmp_path: Path) -> None:
    token = tmp_path / "cluster token"
    token.write_text("b" * 64)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the plan stops at the reachability check, after reading the token
    warning = f"Fix: chmod 600 {token}"
    for mode, warnings in ((0o644, 1), (0o600, 0)):
        token.chmod(mode)
        proc = gridrun(
            "plan",
            str(REPO / "jobs" / "smoke.yaml"),
            "--results",
            str(tmp_path / "results"),
            "--address",
            f"127.0.0.1:{port}",
            env={"RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)},
            timeout=120,
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "cannot reach a Ray cluster" in proc.stderr
        assert proc.stderr.count(warning) == warnings, f"mode {mode:04o}: {proc.stderr}"
