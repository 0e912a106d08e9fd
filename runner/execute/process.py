"""Executor `process`: the worker as a child process with the host's Python."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.execute import warm
from runner.execute.base import (
    Executor,
    Launch,
    Outcome,
    code_env,
    code_problem,
    die_with_parent,
    epoch_reached,
    signal_reason,
    stopped_on_request,
    worker_command,
    worker_env,
)
from runner.store import node_dir
from schemas.registry import FRAMEWORKS

POLL_S = 0.25
Worker = subprocess.Popen[bytes] | warm.WarmChild


def _wait(proc: Worker, seconds: float) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _kill_group(proc: Worker, grace: float = 5.0) -> None:
    """SIGTERM the worker's whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _warm_start(launch: Launch, cmd: list[str], env: dict[str, str], log) -> "warm.WarmChild | None":
    """The worker forked by this node's server of its framework, when the framework allows it; else None."""
    spec_file = launch.spec_file
    framework = FRAMEWORKS.get(spec_file.spec.framework)
    cold = spec_file.code or launch.world > 1 or os.environ.get(warm.WARM_ENV) == "0"  # torchrun starts replicas
    if framework is None or not framework.forkable or cold:
        return None
    conn = warm.connect(Path(node_dir()) / "warm", launch.run_id, framework.name)
    if conn is None:
        return None
    log.write(
        f"$ {' '.join(cmd)}  (warm start: forked from a process that has imported {framework.display})\n".encode()
    )
    child = warm.start(conn, [str(launch.paths.dir), "--cache", str(launch.cache)], env, launch.paths.log)
    if child is None:
        log.write(b"the warm start failed: starting cold\n")
    return child


class ProcessExecutor(Executor):
    """Runs the worker on this node; its output streams into log.txt."""

    name = "process"

    def run(self, launch: Launch) -> Outcome:
        problem = code_problem(launch)
        if problem:
            return Outcome(2, problem)
        cmd = worker_command(sys.executable, launch.paths.dir, launch.cache, launch)
        # The training code has no use for the cluster's token: it must not be able to print it into a log.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")},
            **worker_env(launch, self.name),
        }
        if launch.spec_file.code:
            env.update(code_env(launch.spec_file.code, env.get("PYTHONPATH", "")))
        launch.paths.dir.mkdir(parents=True, exist_ok=True)
        with open(launch.paths.log, "ab", buffering=0) as log:
            proc: Worker | None = _warm_start(launch, cmd, env, log)
            if proc is None:
                log.write(f"$ {' '.join(cmd)}\n".encode())
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group, so a cancel reaches its children
                    preexec_fn=die_with_parent,
                )
            deadline = time.monotonic() + launch.timeout_s if launch.timeout_s else None
            try:
                # Short waits: Ray's cancel raises KeyboardInterrupt only once this thread runs Python again,
                # which a plain wait() would not do before the worker ends.
                while (code := _wait(proc, POLL_S)) is None:
                    if launch.stop_asked:
                        _kill_group(proc)
                        return stopped_on_request(launch)
                    if deadline is not None and time.monotonic() > deadline:
                        _kill_group(proc)
                        minutes = f"{launch.timeout_s / 60:g}"
                        where = epoch_reached(launch.paths, launch.spec_file.spec.train.epochs)
                        reason = f"timed out after {minutes} minutes (resources.timeout_minutes) {where}"
                        return Outcome(124, reason, stopped=True)
            except BaseException:  # Ray's cancel arrives as KeyboardInterrupt
                _kill_group(proc)
                raise
        if code < 0:  # ended by a signal: which one, and where in its epochs, is the reason
            reason = signal_reason(-code, launch.paths, launch.spec_file.spec.train.epochs)
            if -code == signal.SIGKILL:
                reason += "; SIGKILL comes from `kill -9`, or from the kernel when memory runs out (`dmesg` tells)"
            return Outcome(code, reason, stopped=True)
        return Outcome(code, "" if code == 0 else f"worker exited with code {code}")
