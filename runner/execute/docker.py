"""Executor `docker`: the worker in its framework's image, confined and always removed.

The container runs `python -m runner.train.worker` as a non-root user, with all capabilities dropped,
no-new-privileges, no network, memory and pids limits, the suite's results folder read-write, the
cache read-only, and exactly the GPUs the scheduler assigned. Its output streams into log.txt.
"""

import contextlib
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from runner.errors import UserError
from runner.execute import images, reaper
from runner.execute.base import (
    Executor,
    Launch,
    Outcome,
    code_env,
    code_problem,
    epoch_reached,
    signal_reason,
    stopped_on_request,
    worker_command,
    worker_env,
)
from schemas import JobSpec

PROJECT_LABEL = "gridrun"  # every container gridrun starts carries gridrun=1
OWNER_LABEL = "gridrun.owner"  # host:pid:start-time of the process that started it
RESULTS_IN = PurePosixPath("/results")  # the suite's results folder is /results/<suite>
CACHE_IN = PurePosixPath("/cache")
CODE_IN = PurePosixPath("/gridrun/code")  # the suite's code: folder
PIDS_LIMIT = 4096  # threads count as pids: TensorFlow alone starts a few hundred
SHM_MAX = 8 * 2**30  # /dev/shm for data-loading workers, at most half the memory limit
NOBODY = (65534, 65534)  # for an image that names no unprivileged user of its own
POLL_S = 0.5  # how often the wait loop wakes, so a cancel or a timeout is noticed at once
STOP_GRACE_S = 5


def image_for(spec: JobSpec) -> str:
    """The job's own image, else its framework's derived tag."""
    return spec.image or images.tag(spec.framework)


def probe(spec: JobSpec, build: bool = False, say: Callable[[str], None] = print) -> tuple[bool, str]:
    """Can this job run in Docker here? (yes/no, why in words). Never raises for a missing daemon or image.

    A framework image that is missing, or was built from other code, is built when `build` (the run),
    and reported as to be built otherwise (the plan): only the code layer when the Dockerfile is the same."""
    try:
        name = image_for(spec)
    except UserError as e:
        return False, str(e)
    client, why = images.try_connect(timeout=5)
    if client is None:
        return False, why
    image = images.local_image(client, name)
    if spec.image:
        if image is not None:
            return True, f"the Docker daemon answers and image {name} is here"
        pullable, why = _pullable(client, name)
        return (True, f"image {name} will be pulled") if pullable else (False, why)
    if image is not None and images.state_of(image, name) == "current":
        return True, f"the Docker daemon answers and image {name} is built"
    if image is None:
        need = f"image {name} is not built"
    else:
        need = f"image {name} was built from other code (only its code layer is rebuilt)"
    if not build:
        return True, f"{need}; `run` builds it first"
    return _build(spec.framework, need, say)


_FAILED_BUILDS: dict[tuple[str, str], str] = {}  # (tag, source hash) -> why: each failing build is tried once


def _build(framework: str, need: str, say: Callable[[str], None]) -> tuple[bool, str]:
    key = (images.tag(framework), images.source_hash(framework))
    if key in _FAILED_BUILDS:
        return False, _FAILED_BUILDS[key]
    offline = images.index_problem()
    if offline:  # with every layer cached no download is needed, but that cannot be known beforehand
        _FAILED_BUILDS[key] = f"{need}, and it cannot be built here: {offline}"
        return False, _FAILED_BUILDS[key]
    say(f"{need}: building it now")
    try:
        # The build's outline only: the first line of each step.
        steps = lambda text: say(text.splitlines()[0]) if text.startswith("Step ") else None  # noqa: E731
        # Not the probe's client: its 5 s read timeout fails a build whose step is silent for longer
        # (copying a framework's layer on a busy daemon); images.build connects with its own.
        built = images.build(framework, ca=images.pip_cert(), say=steps)
    except Exception as e:  # a build fails in many ways (UserError, the SDK's API and stream errors)
        _FAILED_BUILDS[key] = f"{need}, and building it failed: {e}"
        return False, _FAILED_BUILDS[key]
    say(f"built {built.tag} in {built.seconds:.0f} s")
    return True, f"{need}; built it before the run"


# How a daemon gets the NVIDIA runtime that passes GPUs into containers.
NVIDIA_FIX = (
    "install the NVIDIA Container Toolkit and register its runtime with the daemon "
    "(`sudo nvidia-ctk runtime configure --runtime=docker`, then restart dockerd)"
)


def runtime_problem(client: Any, gpus: float) -> str:
    """'' when the daemon can give a container the GPUs a job reserves (or it reserves none), else why not: the
    daemon's runtimes (`docker info`) hold no NVIDIA one."""
    if gpus <= 0:
        return ""
    runtimes = client.info().get("Runtimes") or {}
    if any("nvidia" in f"{name} {conf}".lower() for name, conf in runtimes.items()):
        return ""
    return (
        f"the Docker daemon has no NVIDIA runtime (its runtimes: {', '.join(sorted(runtimes)) or 'none'}), so it "
        f"cannot give a container the {gpus:g} GPU(s) the job reserves"
    )


def gpu_problem(spec: JobSpec) -> str:
    """`runtime_problem` of this machine's daemon for the job; '' too when no daemon answers (probe says so)."""
    if spec.resources.gpus <= 0:
        return ""
    client, _ = images.try_connect(timeout=5)
    return runtime_problem(client, spec.resources.gpus) if client is not None else ""


def ensure_image(spec: JobSpec) -> str:
    """Check (and pull, for a job's own image) the job's image before anything is scheduled; its digest."""
    client = images.connect()
    name = image_for(spec)
    image = images.local_image(client, name)
    if image is None and spec.image:
        image = _pull(client, name)
    if image is None:
        raise UserError(
            f"job {spec.name!r}: image {name} not built. Fix: run `make images` (or `gridrun images build`)"
        )
    return images.digest(image)


def cleanup_stale() -> int:
    """Remove containers gridrun left behind: those whose starting process on this host is gone. Their count."""
    client, _ = images.try_connect(timeout=5)
    if client is None:
        return 0
    removed = 0
    for container in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}=1"}):
        if _owner_alive(container.labels.get(OWNER_LABEL, "")):
            continue  # another gridrun on this machine is using it
        try:
            container.remove(force=True)
            removed += 1
        except Exception:  # already gone: removed by its owner in the meantime
            pass
    return removed


def container_user(invoker_uid: int, invoker_gid: int, image_user: str) -> tuple[str, tuple[int, int] | None]:
    """The container's uid:gid, and the owner to hand the job folder to (None when it is the invoker's).

    A non-root invoker runs as itself, so its results belong to it. Root runs the image's own
    unprivileged user (numeric USER in gridrun's images), else nobody, and lends it the job folder.
    """
    if invoker_uid != 0:
        return f"{invoker_uid}:{invoker_gid}", None
    match = re.fullmatch(r"(\d+)(?::(\d+))?", image_user or "")
    uid, gid = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else NOBODY
    if uid == 0:
        uid, gid = NOBODY
    return f"{uid}:{gid}", (uid, gid)


def container_config(
    launch: Launch,
    image: str,
    image_digest: str,
    python: str,
    user: str,
    memory_total: int,
    pass_gpus: bool = True,
) -> dict[str, Any]:
    """Keyword arguments of containers.create() for one launch. Pure: no daemon needed. Without `pass_gpus`
    (a daemon that cannot, and a job whose declared fallback is the CPU) the container gets no GPU."""
    from docker.types import DeviceRequest, Mount

    spec = launch.spec_file.spec
    suite_in = RESULTS_IN / launch.paths.dir.parent.name
    job_in = suite_in / launch.paths.dir.name
    # Docker wants absolute sources; --results and --cache may be relative.
    mounts = [
        Mount(str(suite_in), str(launch.paths.dir.parent.resolve()), type="bind", read_only=False),
        Mount(str(CACHE_IN), str(Path(launch.cache).resolve()), type="bind", read_only=True),
    ]
    # Data and weights outside the cache: the loader made them absolute; same path inside, read-only.
    for extra in _input_paths(spec):
        mounts.append(Mount(extra, extra, type="bind", read_only=True))
    code = launch.spec_file.code
    if code:  # the user's modules, on the import path and out of reach of their own writes
        mounts.append(Mount(str(CODE_IN), str(Path(code).resolve()), type="bind", read_only=True))
    memory = int(spec.resources.memory_gb * 2**30) if spec.resources.memory_gb else int(memory_total * 0.9)
    env = {
        **worker_env(launch, "docker"),
        # The container sees only its GPUs, numbered from 0.
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(launch.gpu_ids) if pass_gpus else 0)),
        "GRIDRUN_IMAGE": image,
        "GRIDRUN_IMAGE_DIGEST": image_digest,
        # The invoker's uid may have no home nor passwd entry in the image: Keras and matplotlib
        # write under HOME, and getpass.getuser() (torch.compile's cache) reads USER first.
        "HOME": "/tmp",
        "USER": "gridrun",
        **(code_env(str(CODE_IN)) if code else {}),
    }
    suite, job = launch.spec_file.suite, launch.spec_file.job
    return {
        "image": image,
        "command": worker_command(python, job_in, CACHE_IN, launch),
        "name": _safe(f"gridrun-{suite}-{job}-{secrets.token_hex(3)}"),
        "user": user,
        "environment": env,
        "working_dir": "/tmp",
        "labels": {
            PROJECT_LABEL: "1",
            "gridrun.suite": suite,
            "gridrun.job": job,
            "gridrun.run_id": launch.run_id,
            OWNER_LABEL: _owner(),
        },
        "mounts": mounts,
        # Downloads happened in the prepare step; a job across nodes needs the network for its collectives.
        "network_mode": "host" if spec.resources.nodes > 1 else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        # The CPUs it reserved as a CFS quota: the container cannot take the cores Ray gave other jobs.
        "nano_cpus": int(launch.spec_file.spec.resources.cpus * 1e9),
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap on top
        "pids_limit": PIDS_LIMIT,
        "shm_size": min(SHM_MAX, memory // 2),
        "init": True,  # a real PID 1 that forwards SIGTERM and reaps data-loader processes
        "device_requests": (
            [DeviceRequest(device_ids=list(launch.gpu_ids), capabilities=[["gpu"]])]
            if launch.gpu_ids and pass_gpus
            else None
        ),
    }


class DockerExecutor(Executor):
    """Runs the worker in the job's image and removes the container whatever happens."""

    name = "docker"

    def run(self, launch: Launch) -> Outcome:
        import docker

        try:
            client = images.connect()
            name = launch.spec_file.image or image_for(launch.spec_file.spec)
            image = images.local_image(client, name) or (_pull(client, name) if launch.spec_file.spec.image else None)
        except UserError as e:
            return Outcome(2, str(e))
        if image is None:
            return Outcome(2, f"image {name} not built. Fix: run `make images` (or `gridrun images build`)")
        problem = code_problem(launch)
        if problem:
            return Outcome(2, problem)
        spec = launch.spec_file.spec
        # Checked before devices are requested: a daemon without the NVIDIA runtime refuses them only at the start.
        no_gpus = runtime_problem(client, spec.resources.gpus) if launch.gpu_ids else ""
        if no_gpus and spec.resources.gpu_fallback != "cpu":
            return Outcome(
                2, f"{no_gpus}. Fix: {NVIDIA_FIX}; or use --executor process where the host's framework sees the GPU"
            )
        user, lend_to = container_user(os.getuid(), os.getgid(), image.attrs.get("Config", {}).get("User", ""))
        launch.paths.dir.mkdir(parents=True, exist_ok=True)
        launch.cache.mkdir(parents=True, exist_ok=True)
        python = image.labels.get("gridrun.python") or "python3"
        memory_total = int(client.info().get("MemTotal", 0)) or 8 * 2**30
        config = container_config(launch, name, images.digest(image), python, user, memory_total, pass_gpus=not no_gpus)
        if lend_to:
            _chown_tree(launch.paths.dir, *lend_to)
        container = None
        watchdog = None
        try:
            container = client.containers.create(**config)
            # Removes the container should this Ray worker be killed before the `finally` below can.
            watchdog = reaper.guard_container(container.id)
            with open(launch.paths.log, "ab", buffering=0) as log:
                if no_gpus:  # the worker then announces and records the CPU standing in
                    log.write(f"the container gets no GPU: {no_gpus}; resources.gpu_fallback: cpu\n".encode())
                log.write(
                    f"$ docker run {name} ({container.name}, user {user}): {' '.join(config['command'])}\n".encode()
                )
                container.start()
                return self._follow(client, container, launch, log)
        except docker.errors.APIError as e:
            text = str(e.explanation or e)
            if "device driver" in text or "nvidia" in text.lower():
                text += (
                    " (this daemon cannot pass GPUs to containers. Fix: install the NVIDIA Container Toolkit, "
                    "or use --executor process)"
                )
            return Outcome(1, f"Docker refused the container: {text}")
        finally:
            if container is not None:
                _remove(container)
            reaper.release(watchdog)
            if lend_to:
                _chown_tree(launch.paths.dir, os.getuid(), os.getgid())

    def _follow(self, client: Any, container: Any, launch: Launch, log: Any) -> Outcome:
        """Stream the output into log.txt and wait; a timeout or a cancel stops the container."""
        import requests

        import docker

        streamer = threading.Thread(target=_stream_logs, args=(container, log), daemon=True)
        streamer.start()
        deadline = time.monotonic() + launch.timeout_s if launch.timeout_s else None
        try:
            while True:
                try:
                    status = client.api.wait(container.id, timeout=POLL_S)
                    break
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
                    if "timed out" not in str(e).lower():
                        return Outcome(1, f"lost the Docker daemon while waiting for {container.name}: {e}")
                if launch.stop_asked:
                    _stop(container)
                    streamer.join(10)
                    return stopped_on_request(launch)
                if deadline is not None and time.monotonic() > deadline:
                    _stop(container)
                    streamer.join(10)
                    minutes = launch.timeout_s / 60 if launch.timeout_s else 0
                    where = epoch_reached(launch.paths, launch.spec_file.spec.train.epochs)
                    reason = f"timed out after {minutes:g} minutes (resources.timeout_minutes) {where}"
                    return Outcome(124, reason, stopped=True)
        except docker.errors.NotFound:
            where = epoch_reached(launch.paths, launch.spec_file.spec.train.epochs)
            reason = f"container {container.name} was removed from outside while it ran, {where}"
            return Outcome(137, reason, stopped=True)
        except BaseException:  # KeyboardInterrupt: Ray's cancel or Ctrl-C
            _stop(container)
            raise
        streamer.join(10)
        code = int(status.get("StatusCode", 1))
        return _ended(code, container, launch)


def _ended(code: int, container: Any, launch: Launch) -> Outcome:
    """How the container ended, with the reason in words (none when it succeeded). The caller names the log."""
    if code == 0:
        return Outcome(0)
    epochs = launch.spec_file.spec.train.epochs
    try:
        container.reload()
        oom = container.attrs["State"].get("OOMKilled", False)
    except Exception:
        oom = False
    if oom:  # the kernel killed it at the container's memory limit: Docker records it
        limit = container.attrs["HostConfig"].get("Memory", 0) / 2**30
        return Outcome(
            code,
            f"out of memory (the container hit its memory limit of {limit:.3g} GiB) "
            f"{epoch_reached(launch.paths, epochs)}: raise resources.memory_gb",
            stopped=True,
        )
    if 128 < code <= 128 + 64:  # the exit status of a process a signal ended (the container's init passes it on)
        reason = signal_reason(code - 128, launch.paths, epochs, who=f"worker in container {container.name}")
        if code - 128 in (signal.SIGKILL, signal.SIGTERM):
            reason += " (e.g. `docker kill` or `docker stop`)"
        return Outcome(code, f"{reason}, exit {code}", stopped=True)
    return Outcome(code, f"worker exited with code {code}")


def _stream_logs(container: Any, log: Any) -> None:
    """Copy the container's output into log.txt until it ends (or the container disappears)."""
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            log.write(chunk)
    except Exception:  # the container was removed under us: what was written stays
        pass


def _stop(container: Any) -> None:
    with contextlib.suppress(Exception):  # already stopped or gone
        container.stop(timeout=STOP_GRACE_S)


def _remove(container: Any) -> None:
    # Already gone, or the daemon is: cleanup_stale() catches whatever is left.
    with contextlib.suppress(Exception):
        container.remove(force=True)


def _pullable(client: Any, name: str) -> tuple[bool, str]:
    try:
        client.images.get_registry_data(name)
        return True, ""
    except Exception as e:
        return False, f"image {name} is neither on this machine nor pullable ({_short(e)})"


def _pull(client: Any, name: str) -> Any:
    try:
        return client.images.pull(name)
    except Exception as e:
        raise UserError(
            f"image {name} is neither on this machine nor pullable ({_short(e)}). "
            "Fix: build or load it here (`docker load`), or name a reachable image in the job's `image`"
        ) from None


def _short(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__


def _input_paths(spec: JobSpec) -> list[str]:
    """Absolute data and weights paths the worker reads outside the cache (existing ones)."""
    found = []
    if spec.dataset.path:
        found.append(spec.dataset.path)
    if spec.model.weights not in ("none", "imagenet"):
        found.append(spec.model.weights)
    return sorted(
        {
            str(Path(p).expanduser())
            for p in found
            if Path(p).expanduser().is_absolute() and Path(p).expanduser().exists()
        }
    )


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _safe(name: str) -> str:
    """A valid container name: [a-zA-Z0-9][a-zA-Z0-9_.-]*."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", name)[:200]


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _owner_alive(owner: str) -> bool:
    """Is the process that started a container still running here? Unknown hosts count as alive."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if not pid_text.isdigit():
        return False
    if host != socket.gethostname():
        return True  # another machine sharing this daemon: not ours to judge
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return not started or _start_time(pid) == started
