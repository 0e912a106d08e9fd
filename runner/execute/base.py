"""The executor seam: how one run's worker is started, watched and stopped."""

import contextlib
import ctypes
import json
import os
import signal
import socket
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runner.store.layout import JobPaths, read_json
from runner.train.common import DATA_PARALLEL_ENV
from runner.train.usercode import CODE_ENV
from schemas import SpecFile
from schemas.registry import FRAMEWORKS


@dataclass(frozen=True)
class Group:
    """One node's part in a job that trains across nodes: its rank among them, the first node's rendezvous
    address (torchrun's master) and every node's worker address in rank order (TensorFlow's TF_CONFIG)."""

    node_rank: int = 0
    master: str = ""
    port: int = 0
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one run."""

    paths: JobPaths
    cache: Path
    spec_file: SpecFile
    run_id: str
    gpu_ids: list[str] = field(default_factory=list)
    # Set from outside (a search's scheduler stopping a trial early): the executor ends the worker at once.
    stop: threading.Event | None = None
    group: Group = field(default_factory=Group)

    @property
    def stop_asked(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    @property
    def world(self) -> int:
        return self.spec_file.spec.resources.world

    @property
    def gpu_fraction(self) -> float:
        gpus = self.spec_file.spec.resources.gpus
        return gpus if 0 < gpus < 1 else 1.0

    @property
    def timeout_s(self) -> float | None:
        minutes = self.spec_file.spec.resources.timeout_minutes
        return minutes * 60 if minutes else None


@dataclass(frozen=True)
class Outcome:
    """How a worker ended: its exit code, and a reason when it failed."""

    exit_code: int
    reason: str = ""
    # Ended from outside (a signal, a timeout): the last line of its log is not why, and is not shown as the error.
    stopped: bool = False


def stopped_on_request(launch: Launch) -> Outcome:
    """How a worker ended when `launch.stop` was set: by its search, at the epoch it had reached."""
    where = epoch_reached(launch.paths, launch.spec_file.spec.train.epochs)
    return Outcome(143, f"stopped by its search's scheduler {where}", stopped=True)


# Signals that end a process from outside; any other (SIGSEGV, SIGABRT, SIGBUS, ...) is a crash of its own.
_KILLS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def epoch_reached(paths: JobPaths, epochs: int) -> str:
    """Where in its epochs the worker was, from its progress.json: 'during epoch 3 of 10 (last finished: 2)'."""
    progress = read_json(paths.progress)
    done = progress.get("epoch") if isinstance(progress, dict) else None
    total = progress.get("epochs") if isinstance(progress, dict) else None
    total = total if isinstance(total, int) and total > 0 else epochs
    if not isinstance(done, int) or isinstance(done, bool) or done < 1:
        return f"during epoch 1 of {total} (none finished)"
    if done >= total:
        return f"after its last epoch ({done} of {total}), before result.json was written"
    return f"during epoch {done + 1} of {total} (last finished: {done})"


def signal_reason(signum: int, paths: JobPaths, epochs: int, who: str = "worker") -> str:
    """Why a worker that a signal ended failed: 'worker killed by SIGKILL (signal 9) during epoch 3 of 10 ...'."""
    try:
        sig = signal.Signals(signum)
        name = sig.name
    except ValueError:
        sig, name = None, f"signal {signum}"
    how = "killed by" if sig in _KILLS else "crashed with"
    return f"{who} {how} {name} (signal {signum}) {epoch_reached(paths, epochs)}"


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a worker: get SIGKILL when the process that started it (a Ray worker, a warm server) dies, so no run
    is orphaned."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: a cancel still kills the process group
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def code_env(folder: str, pythonpath: str = "") -> dict[str, str]:
    """The variables that put the suite's code: folder first on the worker's import path, and name it."""
    return {"PYTHONPATH": os.pathsep.join([folder, *([pythonpath] if pythonpath else [])]), CODE_ENV: folder}


def code_problem(launch: Launch) -> str:
    """'' when the job's code: folder (if it has one) is a folder on this node; else why the job cannot start."""
    code = launch.spec_file.code
    if not code or Path(code).is_dir():
        return ""
    return (
        f"the suite's code: folder {code} is not on this node ({socket.gethostname()}), so the job cannot import "
        "your modules. Fix: put the folder on a path every node mounts, or send the suite with `gridrun submit`, "
        "which takes the folder along"
    )


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_command(python: str, job_dir: Path | str, cache: Path | str, launch: Launch | None = None) -> list[str]:
    """The worker's command line, as an argument list (never a shell string). A data-parallel job of a framework
    with a process per replica starts them with torchrun: on one node over loopback, across nodes at the first
    node's address; torchrun ends all of a node's replicas when one fails."""
    worker = ["-m", "runner.train.worker", str(job_dir), "--cache", str(cache)]
    if launch is None or launch.world == 1 or not FRAMEWORKS[launch.spec_file.spec.framework].process_per_replica:
        return [python, *worker]
    res, group = launch.spec_file.spec.resources, launch.group
    # One node: a static rendezvous on loopback (a container without network cannot resolve its own hostname,
    # which --standalone's rendezvous needs); across nodes, at the port the first node found free.
    master, port = (group.master, group.port) if res.nodes > 1 else ("127.0.0.1", free_port())
    where = ["--nnodes", str(res.nodes), "--node-rank", str(group.node_rank)]
    where += ["--master-addr", master, "--master-port", str(port)]
    return [python, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(res.per_node), "--max-restarts",
            "0", *worker]  # fmt: skip


def worker_env(launch: Launch, executor: str) -> dict[str, str]:
    """Variables the worker reads: its GPUs (exactly those the scheduler assigned) and its executor."""
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(launch.gpu_ids),
        "GRIDRUN_GPU_FRACTION": f"{launch.gpu_fraction:g}",
        "GRIDRUN_EXECUTOR": executor,
        "GRIDRUN_RUN_ID": launch.run_id,
        "PYTHONUNBUFFERED": "1",
        # Keep OpenMP (torch, oneDNN) within what the run reserved; the trainers size their own pools the same.
        "OMP_NUM_THREADS": str(launch.spec_file.spec.resources.threads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        **parallel_env(launch),
    }


def parallel_env(launch: Launch) -> dict[str, str]:
    """A data-parallel job's variables: that it is one, and (for a framework with one process per node, not
    torchrun's one per replica) TensorFlow's cluster of one worker per node."""
    if launch.world == 1:
        return {}
    env = {DATA_PARALLEL_ENV: "1"}
    if launch.spec_file.spec.resources.nodes == 1 or launch.group.master.startswith("127."):
        # All replicas on this machine: their collectives over loopback, which a container without network has.
        env |= {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    per_node_process = not FRAMEWORKS[launch.spec_file.spec.framework].process_per_replica
    if per_node_process and launch.spec_file.spec.resources.nodes > 1 and launch.group.peers:
        env["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": list(launch.group.peers)},
                "task": {"type": "worker", "index": launch.group.node_rank},
            }
        )
    return env


class Executor(ABC):
    """Runs `python -m runner.train.worker <job folder>` somewhere and waits for it."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, launch: Launch) -> Outcome:
        """Start the worker, stream its output into log.txt, wait, and return how it ended.

        On KeyboardInterrupt (Ray's cancel), a timeout or `launch.stop`, stop the worker and everything it
        started, then re-raise or return a failed Outcome.
        """
