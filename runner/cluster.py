"""The Ray cluster: an embedded local instance by default, or an existing one by address.

The scheduler side of gridrun: it never imports a framework.
"""

import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from urllib.parse import urlparse

from runner.errors import UserError


@dataclass(frozen=True)
class Node:
    """One alive node and what it offers."""

    node_id: str
    host: str
    cpus: float
    gpus: float
    memory_gb: float
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Cluster:
    """A connected Ray cluster."""

    address: str  # "local" for the embedded instance
    nodes: list[Node]

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


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message, where Ray alone would retry for a minute."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise UserError(
            f"--address {address!r} is not host:port, ray://host:port or auto. Fix: e.g. --address 127.0.0.1:6379."
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}). "
            "Fix: check the address and port, start one with `ray start --head`, or leave out --address "
            "to run on an embedded local Ray."
        ) from None


def connect(address: str | None = None, num_gpus: float | None = None, num_cpus: int | None = None) -> Cluster:
    """Start an embedded Ray (dashboard off, everything on 127.0.0.1) or attach to `address`."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return Cluster("local" if address is None else address, nodes())
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as e:  # Ray raises several types for an unusable cluster
            raise UserError(
                f"cannot attach to the Ray cluster at {address}: {e}. Fix: check the address "
                "and that the cluster runs the same Ray version as this driver."
            ) from None
        return Cluster(address, nodes())
    # Ctrl-C goes to the terminal's whole process group: Ray's own processes, started now, inherit
    # "ignore SIGINT" so that only the driver sees it and can cancel the jobs in order.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _init_local(ray, num_gpus, num_cpus)
    finally:
        signal.signal(signal.SIGINT, previous)
    return Cluster("local", nodes())


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
            )
        )
    return out


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
