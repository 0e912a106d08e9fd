"""Whether every node of a cluster sees a local path as this machine does (a shared mount), by reading only.

Each node reads the fingerprint of the path's nearest existing folder: its inode, modification time and
the names it holds. A mount shared by every node (NFS, a cluster filesystem) gives the same fingerprint
everywhere; a node-local disk gives another one, or none. Nothing is written.
"""

import os
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runner.plan.nodes import Node

PROBE_TIMEOUT_S = 60


def fingerprint(path: str) -> tuple[str, int, int, tuple[str, ...]] | None:
    """(folder, inode, mtime, up to 200 names) of the nearest existing folder at or above `path`."""
    folder = Path(path).expanduser().absolute()
    while not folder.is_dir():
        if folder.parent == folder:
            return None
        folder = folder.parent
    try:
        st = os.stat(folder)
        names = tuple(sorted(os.listdir(folder))[:200])
    except OSError:
        return None
    return str(folder), st.st_ino, st.st_mtime_ns, names


_remote_fingerprint = ray.remote(num_cpus=0, max_retries=0)(fingerprint)


def nodes_without(path: Path, nodes: list[Node]) -> list[Node]:
    """The nodes that do not see `path` as this machine does (none on a one-node cluster)."""
    if len(nodes) < 2:
        return []
    mine = fingerprint(str(path))
    refs = {
        n.node_id: _remote_fingerprint.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(str(path))
        for n in nodes
    }
    out = []
    for node in nodes:
        try:
            theirs = ray.get(refs[node.node_id], timeout=PROBE_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            theirs = None
        if mine is None or theirs != mine:
            out.append(node)
    return out
