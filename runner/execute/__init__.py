"""Executors, as schemas.registry declares them: `process` (the host's Python) and `docker` (the
framework's image); and `auto`, docker where it works, else process."""

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from runner.errors import UserError
from runner.execute.base import Executor, Launch, Outcome
from schemas import JobSpec
from schemas.registry import AUTO_EXECUTOR, EXECUTORS, quoted
from schemas.registry import Executor as ExecutorEntry

__all__ = ["Choice", "Executor", "Launch", "Outcome", "choose", "get"]


@dataclass(frozen=True)
class Choice:
    """Which executor a job runs with, the image when docker, and why."""

    name: str
    reason: str
    image: str = ""


def choose(requested: str, spec: JobSpec, build: bool = False, say: Callable[[str], None] = print) -> Choice:
    """Resolve auto / process / docker for one job. `docker` that cannot work is a UserError. With
    `build` (a run, not a plan), a framework image that is missing or out of date is built first."""
    if requested not in (AUTO_EXECUTOR, "docker"):  # only docker is probed; any other is taken as asked
        _declared(requested)
        return Choice(requested, "asked for")
    from runner.execute import docker

    asks = "the docker executor" if requested == "docker" else f"its own image {spec.image}"
    no_gpus = docker.gpu_problem(spec)
    if no_gpus and (requested == "docker" or spec.image) and spec.resources.gpu_fallback != "cpu":
        raise UserError(
            f"job {spec.name!r} asks for {asks}, but {no_gpus}. Fix: {docker.NVIDIA_FIX}; or use --executor "
            "process where the host's framework sees the GPU, or declare resources.gpu_fallback: cpu"
        )
    if no_gpus and requested == AUTO_EXECUTOR and not spec.image:
        # The process executor is the one that can reach the GPU; its worker fails at the start if it cannot.
        return Choice("process", f"{no_gpus}: the host's Python runs it")
    ok, why = docker.probe(spec, build, say)
    if ok:
        return Choice("docker", "asked for" if requested == "docker" else why, docker.image_for(spec))
    if requested == "docker" or spec.image:  # a job's own image must be usable: no silent fallback
        raise UserError(
            f"job {spec.name!r} asks for {asks}, but {why}. "
            "Fix: start the Docker daemon and build the images (`make images`), or use --executor process."
        )
    return Choice("process", why)


def get(name: str) -> Executor:
    """An executor by name, its module imported only now."""
    module, _, cls = _declared(name).implementation.partition(":")
    return getattr(import_module(module), cls)()


def _declared(name: str) -> ExecutorEntry:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}. Fix: use one of {quoted([AUTO_EXECUTOR, *EXECUTORS])}.")
    return EXECUTORS[name]
