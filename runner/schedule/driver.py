"""Running a plan on Ray: one task per job, statuses kept, failures recorded, Ctrl-C honoured.

Where a node does not see the driver's results folder, the job runs in a folder on that node and
runner.schedule.transfer brings it back, live while it runs and whole when it ends. A job whose task or node
fails runs again elsewhere (resources.max_retries), from the checkpoint that came back. A head that
stops answering ends the run: unfinished jobs are marked failed ("cluster lost"), finished ones stay.
"""

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray

from runner import __version__
from runner import execute as executors
from runner.errors import UserError
from runner.execute import Launch
from runner.plan import PlannedJob
from runner.report.live import LiveView
from runner.schedule import cluster as ray_cluster
from runner.schedule import inputs, transfer
from runner.store.layout import JobPaths, SuitePaths, write_json
from schemas import JobState, RunStatus, SpecFile

USER_ERROR_EXIT = 2
# Files of a job folder that a new attempt on another node does not need from the driver.
NOT_SEEDED = ("spec.json", "status.json", "result.json", "progress.json")
HEAD_CHECK_S = 2.0


def now() -> datetime:
    return datetime.now(UTC)


def lost_after_s() -> float:
    """How long the head may stay silent before the run ends as 'cluster lost' ($GRIDRUN_CLUSTER_LOST_AFTER_S)."""
    return float(os.environ.get("GRIDRUN_CLUSTER_LOST_AFTER_S", 20))


class ClusterLost(UserError):
    """The Ray cluster went away mid-suite. Not the user's input: the suite failed (exit 1)."""

    exit_code = 1


class _Lost(Exception):
    pass


@dataclass(frozen=True)
class Request:
    """What one attempt of one job is given: enough to run on a node that does not see the results."""

    job_dir: str  # the job's folder as the driver sees it
    cache: str
    executor: str
    run_id: str
    attempt: int  # counts this run's attempts of the job, from 1
    marker: str  # a file the driver wrote beside the job folders ...
    marker_token: str  # ... holding this: a node that reads it back shares the results disk
    spec_json: str
    status_json: str  # status.json as queued
    seed: list[tuple[str, list[Any]]] = field(default_factory=list)  # (path, chunk refs) the driver holds
    board: Any = None  # actor handle: where a job that runs in a node folder says so
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (path in the cache, size) the job reads
    sent_inputs: list[tuple[str, list[Any]]] = field(default_factory=list)  # those the node asked for


def _execute(req: Request) -> dict:
    """The Ray task: start the job's worker with the GPUs Ray assigned, wait, report how it ended."""
    ctx = ray.get_runtime_context()
    gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
    node_id = ctx.get_node_id()
    cache = Path(req.cache)
    if req.inputs:  # only from a driver of a remote cluster: its cache may not be on this node
        wanted = [inputs.Input(rel, size) for rel, size in req.inputs]
        if inputs.missing(cache, wanted):
            cache = inputs.node_cache()
            transfer.receive_files(cache, req.sent_inputs, ray.get)
            lacking = inputs.missing(cache, wanted)
            if lacking:  # before anything is written: the driver sends them and starts the job again
                return {"needs_inputs": [(i.rel, i.size) for i in lacking], "node_id": node_id}
    spec_file = SpecFile.model_validate_json(req.spec_json)
    local_dir, state = "", {}
    if transfer.shares_results(req.marker, req.marker_token):
        paths = JobPaths(Path(req.job_dir))
    else:
        root = transfer.attempt_dir(req.run_id, spec_file.job, req.attempt, node_id)
        paths = JobPaths(root / spec_file.suite / spec_file.job)
        state = transfer.plant(paths.dir, req.spec_json, req.seed, ray.get)
        local_dir = str(paths.dir)
        if req.board is not None:  # for the live view; the outcome below says the same at the end
            req.board.started.remote(spec_file.job, req.attempt, node_id, local_dir, state)
    previous = RunStatus.model_validate_json(req.status_json)
    status = RunStatus(
        state=JobState.RUNNING,
        spec_hash=spec_file.spec_hash,
        attempts=previous.attempts + 1,
        executor=req.executor,
        node=socket.gethostname(),
        gpu_ids=gpu_ids,
        queued_at=previous.queued_at,
        started_at=now(),
    )
    write_json(paths.status, status)
    outcome = executors.get(req.executor).run(Launch(paths, cache, spec_file, req.run_id, gpu_ids))
    return {
        "exit_code": outcome.exit_code,
        "reason": outcome.reason,
        "node_id": node_id,
        "local_dir": local_dir,
        "state": state,
    }


# The driver retries a failed task itself (it knows why it failed, and what came back to resume from).
_remote_execute = ray.remote(max_retries=0)(_execute)


@ray.remote(num_cpus=0, max_restarts=0)
class Board:
    """A mailbox: tasks that run in a node folder say where, so the driver can bring the folder back live."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def started(self, job: str, attempt: int, node_id: str, local_dir: str, state: dict) -> None:
        self.messages.append(
            {"job": job, "attempt": attempt, "node_id": node_id, "local_dir": local_dir, "state": state}
        )

    def drain(self) -> list[dict]:
        out, self.messages = self.messages, []
        return out


@dataclass
class Running:
    job: PlannedJob
    ref: "ray.ObjectRef"
    tries_left: int
    attempt: int
    outcome: dict | None = None  # how the task ended, once it has
    sent_inputs: list[tuple[str, list[Any]]] = field(default_factory=list)
    mirror: transfer.Mirror | None = None  # the job's node folder, when it runs in one


def _last_error(log: Path) -> str:
    """The worker's own last 'error:' line (or the last line), to put in the status."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.lower().startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:500]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


class Driver:
    """Schedules the jobs of one plan and keeps their status files true."""

    def __init__(
        self, suite_name: str, suite_text: str, profile: str | None, results: Path, cache: Path, view: LiveView
    ) -> None:
        self.suite = SuitePaths.of(results, suite_name)
        self.suite_text = suite_text
        self.profile = profile
        self.cache = cache
        self.view = view
        self.run_id = uuid.uuid4().hex[:12]
        self.cluster = ray_cluster.current()
        self.lost: ClusterLost | None = None  # set when the cluster went away mid-suite
        self._attempts: dict[str, int] = {}
        self._cleanups: list[Any] = []
        self._board: Any = None
        self._marker: Path | None = None
        self._token = ""
        self._sent: dict[str, list[Any]] = {}  # input path in the cache -> its pieces in the object store

    @property
    def _remote(self) -> bool:
        return self.cluster is not None and not self.cluster.embedded

    def run(self, plan: list[PlannedJob]) -> dict[str, RunStatus]:
        """Run every job of the plan; return the final status of each."""
        self.suite.dir.mkdir(parents=True, exist_ok=True)
        self.suite.suite_file.write_text(self.suite_text)
        self._marker, self._token = transfer.write_marker(self.suite.dir, self.run_id)
        finals: dict[str, RunStatus] = {}
        running: list[Running] = []
        try:
            if self._remote:
                self._board = self._start_board()
            for job in plan:
                self._write_spec(job)
                if job.action == "skip":
                    finals[job.spec.name] = self._finish(job, JobState.SKIPPED, reason=job.why, keep_times=True)
                elif job.action == "fail":
                    finals[job.spec.name] = self._finish(job, JobState.FAILED, reason=job.why)
                else:
                    running.append(self._submit(job, job.spec.resources.max_retries))
            self.view.start(plan)
            try:
                self._wait(running, finals)
            except KeyboardInterrupt:
                self._cancel(running, finals)
                raise
            except _Lost as e:
                self._give_up(running, finals, str(e))
            finally:
                self.view.stop()
            if self.lost is None and self._cleanups:
                ray.wait(self._cleanups, num_returns=len(self._cleanups), timeout=10)
        finally:
            self._marker.unlink(missing_ok=True)
        return finals

    def _start_board(self) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Beside the driver (or on the head, for a Ray Client driver): it lives as long as the run.
        client = self.cluster.address.startswith("ray://")
        here = (ray_cluster.head_node_id() if client else None) or ray.get_runtime_context().get_node_id()
        return Board.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()

    def _write_spec(self, job: PlannedJob) -> None:
        paths = job.paths
        old = paths.read_spec()
        if job.action == "run" and old is not None and (old.spec_hash != job.spec_hash or job.why.startswith("forced")):
            # A changed or forced spec starts clean: stale checkpoints must not be resumed.
            shutil.rmtree(paths.dir)
        if job.action == "skip":
            return
        paths.dir.mkdir(parents=True, exist_ok=True)
        for stale in (paths.result, paths.progress):
            stale.unlink(missing_ok=True)
        write_json(
            paths.spec,
            SpecFile(
                suite=self.suite.dir.name,
                job=job.spec.name,
                spec_hash=job.spec_hash,
                code_version=__version__,
                profile=self.profile,
                declared=job.declared,
                spec=job.spec,
                substitutions=job.substitutions,
                executor=job.executor.name,
                image=job.executor.image,
            ),
        )

    def _submit(self, job: PlannedJob, tries_left: int, sent_inputs: list | None = None) -> Running:
        previous = job.paths.read_status()
        queued = RunStatus(
            state=JobState.QUEUED,
            spec_hash=job.spec_hash,
            attempts=previous.attempts if previous and previous.spec_hash == job.spec_hash else 0,
            executor=job.executor.name,
            queued_at=now(),
        )
        write_json(job.paths.status, queued)
        attempt = self._attempts[job.spec.name] = self._attempts.get(job.spec.name, 0) + 1
        # A node that does not share the results gets the driver's files (checkpoints to resume from) with
        # the task; on an embedded Ray every node is this machine, so nothing needs to travel.
        seed = transfer.seed(job.paths.dir, transfer.chunk_bytes(), NOT_SEEDED, ray.put) if self._remote else []
        request = Request(
            job_dir=str(job.paths.dir.resolve()),
            cache=str(Path(self.cache).resolve()),
            executor=job.executor.name,
            run_id=self.run_id,
            attempt=attempt,
            marker=str(self._marker.resolve()),
            marker_token=self._token,
            spec_json=job.paths.spec.read_text(),
            status_json=queued.model_dump_json(),
            seed=seed,
            board=self._board,
            inputs=[(i.rel, i.size) for i in inputs.of_job(job.spec, self.cache)] if self._remote else [],
            sent_inputs=sent_inputs or [],
        )
        res = job.spec.resources
        options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        if res.memory_gb:
            options["memory"] = int(res.memory_gb * 2**30)
        if res.custom:
            options["resources"] = dict(res.custom)
        if res.labels:
            options["label_selector"] = dict(res.labels)
        ref = _remote_execute.options(**options).remote(request)
        return Running(job, ref, tries_left, attempt, sent_inputs=sent_inputs or [])

    def _wait(self, running: list[Running], finals: dict[str, RunStatus]) -> None:
        last_board = last_check = time.monotonic()
        silent_since: float | None = None
        while running:
            waiting = {r.ref: r for r in running if r.outcome is None}
            # A finished pull wakes the loop too, so that a folder in many pieces streams without pauses.
            pulls = [r.mirror.pending for r in running if r.mirror is not None and r.mirror.pending is not None]
            try:
                ready = ray.wait([*waiting, *pulls], num_returns=1, timeout=0.5)[0] if waiting or pulls else []
                if not waiting and not pulls:
                    time.sleep(0.05)
                for ref in ready:
                    if ref in waiting:
                        self._ended(waiting[ref])
                if self._board is not None and time.monotonic() - last_board > 1:
                    last_board = time.monotonic()
                    self._read_board(running)
                for item in running:
                    if item.mirror is not None:
                        item.mirror.step()
            except Exception as e:  # the connection to the head broke (OSError, ConnectionError, RaySystemError)
                if self.cluster is not None and not ray_cluster.alive(self.cluster):
                    raise _Lost(f"Ray failed with {_first_line(e)} and the head does not answer") from None
                raise
            self.view.refresh()
            for item in list(running):
                if item.outcome is not None and (item.mirror is None or item.mirror.done):
                    running.remove(item)
                    retry = self._collect(item, finals)
                    if retry is not None:
                        running.append(retry)
            if self.cluster is not None and time.monotonic() - last_check > HEAD_CHECK_S:
                last_check = time.monotonic()
                if ray_cluster.alive(self.cluster):
                    silent_since = None
                elif silent_since is None:
                    silent_since = last_check
                elif last_check - silent_since > lost_after_s():
                    host, port = self.cluster.probe
                    raise _Lost(f"its head ({host}:{port}) stopped answering {last_check - silent_since:.0f} s ago")

    def _ended(self, item: Running) -> None:
        """The task of `item` ended: keep how, and start bringing its node folder back if it has one."""
        try:
            item.outcome = ray.get(item.ref)
        except ray.exceptions.TaskCancelledError:
            item.outcome = {"cancelled": True}
        except ray.exceptions.RayError as e:
            item.outcome = {"exit_code": None, "reason": f"the run's Ray task failed: {_first_line(e)}"}
            if item.mirror is not None:
                item.mirror.stop("the task failed")
            return
        if item.outcome.get("local_dir"):
            if item.mirror is None:
                o = item.outcome
                item.mirror = transfer.Mirror(
                    o["node_id"], o["local_dir"], o["state"], item.job.paths.dir, item.attempt
                )
            item.mirror.finish()

    def _read_board(self, running: list[Running]) -> None:
        try:
            messages = ray.get(self._board.drain.remote(), timeout=5)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return  # live copies pause; each job's folder still comes back when it ends
        for m in messages:
            item = next((r for r in running if r.job.spec.name == m["job"] and r.attempt == m["attempt"]), None)
            if item is not None and item.mirror is None and item.outcome is None:
                item.mirror = transfer.Mirror(
                    m["node_id"], m["local_dir"], m["state"], item.job.paths.dir, m["attempt"]
                )

    def _collect(self, item: Running, finals: dict[str, RunStatus]) -> Running | None:
        job, outcome = item.job, item.outcome or {}
        if item.mirror is not None:  # on a node that died, this fails at once: nothing is left there anyway
            self._cleanups.append(item.mirror.cleanup())
        if outcome.get("cancelled"):
            finals[job.spec.name] = self._finish(job, JobState.CANCELLED, reason="cancelled")
            return None
        if outcome.get("needs_inputs"):
            return self._send_inputs(item, finals)
        code, reason = outcome.get("exit_code"), outcome.get("reason", "")
        if item.mirror is not None and item.mirror.lost and code == 0:
            code, reason = None, f"its folder did not come back from its node: {item.mirror.lost}"
        if code == 0 and job.paths.read_result() is not None:
            finals[job.spec.name] = self._finish(job, JobState.SUCCEEDED, exit_code=0)
            self.view.event(job.spec.name, "succeeded")
            return None
        if code == 0:
            reason = "worker exited 0 but wrote no valid result.json"
        detail = _last_error(job.paths.log)
        full = f"{reason}: {detail} (log: {job.paths.log})" if detail else f"{reason} (log: {job.paths.log})"
        if code != USER_ERROR_EXIT and item.tries_left > 0:
            self.view.event(job.spec.name, f"failed, retrying ({item.tries_left} left): {full}")
            return self._submit(job, item.tries_left - 1)
        finals[job.spec.name] = self._finish(job, JobState.FAILED, exit_code=code, reason=full)
        self.view.event(job.spec.name, f"failed: {full}")
        return None

    def _send_inputs(self, item: Running, finals: dict[str, RunStatus]) -> Running | None:
        """The job's node lacks some of its inputs: send them (each once per run) and start it again there
        or elsewhere. Not a retry: nothing ran."""
        job, outcome = item.job, item.outcome or {}
        needs = [inputs.Input(rel, size) for rel, size in outcome["needs_inputs"]]
        node = str(outcome.get("node_id", ""))[:12]
        if item.sent_inputs and {rel for rel, _ in item.sent_inputs} >= {i.rel for i in needs}:
            reason = f"node {node} still lacks {needs[0].rel} after it was sent there (a full disk on the node?)"
            finals[job.spec.name] = self._finish(job, JobState.FAILED, reason=reason)
            self.view.event(job.spec.name, f"failed: {reason}")
            return None
        new = [i for i in needs if i.rel not in self._sent]
        size = sum(i.size for i in needs) / 2**20
        self.view.event(
            job.spec.name,
            f"node {node} lacks {len(needs)} input file(s) of the cache ({size:.1f} MiB); sending them through Ray"
            + ("" if new else " (already in Ray's object store)"),
        )
        for rel, refs in transfer.send_files(self.cache, [i.rel for i in new], transfer.chunk_bytes(), ray.put):
            self._sent[rel] = refs
        sent = [(i.rel, self._sent[i.rel]) for i in needs]
        return self._submit(job, item.tries_left, sent)

    def _finish(
        self, job: PlannedJob, state: JobState, exit_code: int | None = None, reason: str = "", keep_times: bool = False
    ) -> RunStatus:
        previous = job.paths.read_status()
        base = previous.model_dump() if previous and previous.spec_hash == job.spec_hash else {}
        base.update(state=state, spec_hash=job.spec_hash, reason=reason, executor=job.executor.name)
        if not keep_times:
            base.update(exit_code=exit_code, finished_at=now())
        status = RunStatus.model_validate(base)
        job.paths.dir.mkdir(parents=True, exist_ok=True)
        write_json(job.paths.status, status)
        return status

    def _cancel(self, running: list[Running], finals: dict[str, RunStatus]) -> None:
        """Ctrl-C: cancel every task (its executor kills the worker), bring back what ran on other nodes'
        disks, mark each job cancelled."""
        self.view.stop()
        for item in running:
            if item.outcome is None:
                ray.cancel(item.ref, force=False)
        deadline = time.monotonic() + 20
        pending = [r.ref for r in running if r.outcome is None]
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1)
        deadline = time.monotonic() + 30
        for item in running:
            if item.mirror is not None and item.mirror.drain(deadline):
                ray.wait([item.mirror.cleanup()], timeout=5)
        why = "cancelled by `gridrun cancel`" if os.environ.get("GRIDRUN_SUBMISSION") else "cancelled by Ctrl-C"
        for item in running:
            if item.job.spec.name not in finals:
                finals[item.job.spec.name] = self._finish(item.job, JobState.CANCELLED, reason=why)

    def _give_up(self, running: list[Running], finals: dict[str, RunStatus], why: str) -> None:
        """The head is gone: record every job that did not finish as failed, keep those that did."""
        reason = f"cluster lost: {why}"
        for item in running:
            if item.mirror is not None:
                item.mirror.done, item.mirror.lost = True, reason
                item.mirror.receiver.discard_partials()
            name = item.job.spec.name
            finals[name] = self._finish(item.job, JobState.FAILED, reason=reason)
            self.view.event(name, f"failed: {reason}")
        unfinished = len(running)
        succeeded = sum(1 for s in finals.values() if s.state in (JobState.SUCCEEDED, JobState.SKIPPED))
        self.lost = ClusterLost(
            f"lost the Ray cluster at {self.cluster.address}: {why}. {succeeded} job(s) had finished and are "
            f"complete in {self.suite.dir}; {unfinished} unfinished job(s) are marked failed with reason "
            "'cluster lost'. Fix: restart the cluster (or mend the network to its head) and run the same command "
            "again: finished jobs are skipped, the others resume from their last checkpoint that came back."
        )
