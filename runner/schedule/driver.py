"""Running a plan on Ray: one task per job, statuses kept, failures recorded, Ctrl-C honoured.

Each job's task writes straight into the results store: in place when the store is a local folder (on a
cluster, one every node mounts), else in a working folder on its node whose files reach the store as they
are written (runner.store.Syncer: status and progress within seconds, events live, checkpoints when saved,
result.json last). No file travels through Ray. A job whose task or node fails runs again elsewhere
(resources.max_retries), from the last checkpoint in the store. A head that stops answering ends the run:
unfinished jobs are marked failed ("cluster lost"), finished ones stay.
"""

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import ray

from runner import __version__
from runner import execute as executors
from runner.errors import UserError, stop_name
from runner.execute import Launch, Outcome
from runner.execute.base import Group
from runner.plan import PlannedJob
from runner.prepare import Cache, inputs
from runner.schedule import cluster as ray_cluster
from runner.store import JobPaths, JobStore, ResultsStore, node_dir
from schemas import JobState, Owner, RunStatus, SpecFile
from schemas.status import plain_text

USER_ERROR_EXIT = 2
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


class View(Protocol):
    """What the driver tells the live view (runner.report.live.LiveView)."""

    def start(self, plan: list[PlannedJob]) -> None: ...
    def refresh(self) -> None: ...
    def event(self, name: str, message: str) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Request:
    """What one attempt of one job is given: where its results and inputs live, and its spec."""

    results: str  # the results store's root, a local path or a URL
    suite: str
    job: str
    cache: str  # the cache: a local path (every node sees it) or a URL to fetch `inputs` from
    executor: str
    run_id: str
    attempt: int  # counts this run's attempts of the job, from 1
    spec_json: str
    status_json: str  # status.json as queued
    wanted: list[inputs.Input] = field(default_factory=list)  # inputs to fetch: only with a cache URL
    search: str = ""  # the search whose trial this is; '' for a job of the suite
    group: Group = field(default_factory=Group)  # this node's part of a job across nodes


def _last_error(log: Path) -> str:
    """The worker's own last 'error:' line (or the last line), to put in the status."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.lower().startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:500]


# Log files an error's text names by absolute path, as Ray's messages name its own (not its traceback's sources).
_LOG_PATHS = re.compile(r"(/[^\s'\"(),;:\[\]]+\.(?:log|out|err))\b")


def _log_note(job: JobStore, ray_error: str = "") -> str:
    """Which log tells more, named only when it exists: the job's log.txt, else a log file Ray's error names."""
    if job.has_log():
        return f"log: {job.log_url()}"
    for path in _LOG_PATHS.findall(plain_text(ray_error)):
        if Path(path).is_file():
            return f"Ray's log: {path}"
    return "no log was written"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _node_cache(req: Request) -> Path:
    if not req.wanted:
        return Path(req.cache)
    from runner.store import Storage

    return inputs.fetch(Storage.open(req.cache), req.wanted, inputs.node_cache(req.cache))


class Attempt:
    """One attempt of one job on the node that runs it: its folder in the store (or a working copy whose files
    reach the store as they are written), its status running, its executor; used by a job's Ray task and by a
    search's trial alike."""

    def __init__(self, req: Request) -> None:
        self.req = req
        suite = ResultsStore.open(req.results, check=False).suite(req.suite)
        self.job = suite.search(req.search).trial(req.job) if req.search else suite.job(req.job)
        self.spec_file = SpecFile.model_validate_json(req.spec_json)
        ctx = ray.get_runtime_context()
        self.gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
        self.node_id = ctx.get_node_id()
        # Of a job across nodes, the first node's attempt keeps the job's status and files; the others only run
        # their replicas (which write nothing) from the spec.
        self.primary = req.group.node_rank == 0
        self.work: Path | None = None
        self.paths: JobPaths | None = None
        self.cache: Path | None = None
        self.syncer = None

    def open(self) -> dict | None:
        """Make the job's folder ready and mark it running; an outcome when it cannot run at all."""
        req, job = self.req, self.job
        try:
            self.cache = _node_cache(req)
        except UserError as e:
            return {"exit_code": USER_ERROR_EXIT, "reason": str(e), "node_id": self.node_id}
        # Checked again where the job runs: a link made after the plan must not let its executor write outside.
        linked = job.link_problem()
        if linked:
            return {"exit_code": USER_ERROR_EXIT, "reason": linked, "node_id": self.node_id}
        self.paths = job.local
        if self.paths is None:  # object storage: a working folder here, copied into the store as it changes
            # One folder per attempt, removed whole at its end; the job folder keeps the job's own name.
            self.work = node_dir() / "work" / f"{req.run_id}-{job.label.replace('/', '-')}-{req.attempt}"
            self.work = self.work / req.suite / req.job
            self.paths = job.working_copy(self.work)
            self.paths.spec.write_text(req.spec_json)
        if not self.primary:
            return None
        previous = RunStatus.model_validate_json(req.status_json)
        job.write_status(
            RunStatus(
                state=JobState.RUNNING,
                spec_hash=self.spec_file.spec_hash,
                attempts=previous.attempts + 1,
                executor=req.executor,
                node=socket.gethostname(),
                gpu_ids=self.gpu_ids,
                queued_at=previous.queued_at,
                started_at=now(),
                owner=previous.owner,
            )
        )
        self.syncer = job.syncer(self.paths.dir) if self.work is not None else None
        if self.syncer is not None:
            self.syncer.start()
        return None

    def run(self, stop: "threading.Event | None" = None) -> Outcome:
        assert self.paths is not None and self.cache is not None
        launch = Launch(self.paths, self.cache, self.spec_file, self.req.run_id, self.gpu_ids, stop, self.req.group)
        return executors.get(self.req.executor).run(launch)

    def close(self) -> tuple[str, str]:
        """Copy what the run wrote (its last checkpoint) to the store, on a cancel too; (why the copy failed, or
        '', and the worker's last error line)."""
        reason = ""
        if self.syncer is not None:
            try:
                self.syncer.stop(final=True)
            except Exception as e:
                reason = f"its files could not be copied to {self.job.url}: {_first_line(e)}"
            self.syncer = None
        error_line = _last_error(self.paths.log) if self.paths is not None else ""
        if self.work is not None:
            shutil.rmtree(self.work.parent.parent, ignore_errors=True)
            self.work = None
        return reason, error_line


def _execute(req: Request) -> dict:
    """The Ray task: start the job's worker with the GPUs Ray assigned, keep its folder in the store, wait,
    report how it ended."""
    # Ray's cancel interrupts the task through SIGINT (_thread.interrupt_main), which does nothing where SIGINT
    # is ignored (a worker started by a shell's background job inherits that).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        with contextlib.suppress(ValueError):  # not the main thread: then Ray cancels it its own way
            signal.signal(signal.SIGINT, signal.default_int_handler)
    attempt = Attempt(req)
    early = attempt.open()
    if early is not None:
        return early
    try:
        outcome = attempt.run()
    finally:  # on a cancel too: what the run wrote (its last checkpoint) reaches the store
        reason, error_line = attempt.close()
    if reason:
        return {"exit_code": None, "reason": reason, "node_id": attempt.node_id, "error_line": ""}
    # A worker stopped from outside never said why: its log's last line is a progress line, not the error.
    detail = "" if outcome.stopped else error_line
    return {"exit_code": outcome.exit_code, "reason": outcome.reason, "node_id": attempt.node_id, "error_line": detail}


# The driver retries a failed task itself (it knows why it failed, and resumes from the store).
_remote_execute = ray.remote(max_retries=0)(_execute)


def _free_port() -> tuple[str, int]:
    """This node's address and a port free on it now: a rendezvous for a job's replicas."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return ray.util.get_node_ip_address(), sock.getsockname()[1]


_remote_free_port = ray.remote(max_retries=0, num_cpus=0)(_free_port)


def _execute_across(req: Request, bundle: dict[str, float], options: dict[str, Any], labels: dict[str, str]) -> dict:
    """The Ray task of a job across nodes: a placement group of one bundle per node, on distinct nodes; each node's
    replicas started in the job's executor with the first node's rendezvous. The first node's outcome is the job's;
    when any node's replicas end otherwise, the others are stopped, and the attempt fails (the retry resumes)."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = SpecFile.model_validate_json(req.spec_json).spec
    nodes = spec.resources.nodes
    group = placement_group(
        [bundle] * nodes, strategy="STRICT_SPREAD", bundle_label_selector=[labels] * nodes if labels else None
    )
    refs: list = []
    try:
        ray.get(group.ready())
        place = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(nodes)]
        spots = ray.get([_remote_free_port.options(scheduling_strategy=p).remote() for p in place])
        master, port = spots[0]
        peers = tuple(f"{host}:{free}" for host, free in spots)
        for rank, where in enumerate(place):
            node_req = dataclasses.replace(req, group=Group(rank, master, port, peers))
            refs.append(_remote_execute.options(**options, scheduling_strategy=where).remote(node_req))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            outcome = ray.get(done[0])
            if outcome.get("exit_code") != 0 and pending:
                rank = refs.index(done[0])
                for ref in pending:  # no replica waits on a collective that will not come
                    ray.cancel(ref)
                ray.wait(pending, num_returns=len(pending), timeout=60)
                if rank:
                    why = outcome.get("reason") or f"exit code {outcome.get('exit_code')}"
                    outcome = {**outcome, "reason": f"the replicas on node {rank + 1} of {nodes} failed: {why}"}
                return outcome
        return ray.get(refs[0])
    finally:
        for ref in refs:
            ray.cancel(ref)  # on a cancel of this task too (Ray cancels its children as well; this is sure)
        remove_placement_group(group)


_remote_execute_across = ray.remote(max_retries=0, num_cpus=0)(_execute_across)


@dataclass
class Running:
    job: PlannedJob
    ref: "ray.ObjectRef"
    tries_left: int
    attempt: int


class Driver:
    """Schedules the jobs of one plan and keeps their status files true."""

    def __init__(
        self,
        suite_name: str,
        suite_text: str,
        profile: str | None,
        results: ResultsStore,
        cache: Cache,
        view: View,
        owner: Owner,
    ) -> None:
        self.results = results
        self.suite = results.suite(suite_name)
        self.suite_text = suite_text
        self.profile = profile
        self.cache = cache
        self.view = view
        self.owner = owner  # holds the suite folder's lock: the one driver of these jobs
        self.run_id = owner.run_id
        self.cluster = ray_cluster.current()
        self.lost: ClusterLost | None = None  # set when the cluster went away mid-suite
        self._attempts: dict[str, int] = {}
        self._specs: dict[str, str] = {}  # job -> its spec.json, as written

    def run(self, plan: list[PlannedJob]) -> dict[str, RunStatus]:
        """Run every job of the plan; return the final status of each."""
        self.suite.write_suite_file(self.suite_text)
        finals: dict[str, RunStatus] = {}
        running: list[Running] = []
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
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (runner.errors.Stopped)
            self._cancel(running, finals, stop_name())
            raise
        except _Lost as e:
            self._give_up(running, finals, str(e))
        finally:
            self.view.stop()
        return finals

    def _write_spec(self, job: PlannedJob) -> None:
        store = job.store
        old = store.read_spec()
        if job.action == "run" and old is not None and (old.spec_hash != job.spec_hash or job.why.startswith("forced")):
            # A changed or forced spec starts clean: stale checkpoints must not be resumed. A finished result
            # is kept, moved aside (the plan named where); an unfinished one has nothing worth keeping.
            if store.read_result() is not None:
                where = self.suite.set_aside(job.spec.name, old.spec_hash)
                self.view.event(job.spec.name, f"earlier result kept in {self.suite.url}/{where}")
            else:
                store.remove()
        if job.action == "skip":
            return
        store.clear("result.json", "progress.json")
        spec_file = SpecFile(
            suite=self.suite.name,
            job=job.spec.name,
            spec_hash=job.spec_hash,
            code_version=__version__,
            profile=self.profile,
            declared=job.declared,
            spec=job.spec,
            substitutions=job.substitutions,
            executor=job.executor.name,
            image=job.executor.image,
            code=job.code,
            identity=job.identity,
        )
        store.write_spec(spec_file)
        self._specs[job.spec.name] = spec_file.model_dump_json()

    def _submit(self, job: PlannedJob, tries_left: int) -> Running:
        previous = job.store.read_status()
        queued = RunStatus(
            state=JobState.QUEUED,
            spec_hash=job.spec_hash,
            attempts=previous.attempts if previous and previous.spec_hash == job.spec_hash else 0,
            executor=job.executor.name,
            queued_at=now(),
            owner=self.owner,
        )
        job.store.write_status(queued)
        attempt = self._attempts[job.spec.name] = self._attempts.get(job.spec.name, 0) + 1
        request = Request(
            results=self.results.url,
            suite=self.suite.name,
            job=job.spec.name,
            cache=self.cache.url,
            executor=job.executor.name,
            run_id=self.run_id,
            attempt=attempt,
            spec_json=self._specs[job.spec.name],  # as written by _write_spec: no read back from the store
            status_json=queued.model_dump_json(),
            wanted=inputs.of_job(job.spec, self.cache.local) if self.cache.remote is not None else [],
        )
        res = job.spec.resources
        options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        if res.memory_gb:
            options["memory"] = int(res.memory_gb * 2**30)
        if res.custom:
            options["resources"] = dict(res.custom)
        if res.nodes > 1:  # each node's part takes one bundle of a placement group: the labels go to the bundles
            bundle = {"CPU": res.cpus, "GPU": res.gpus, "memory": options.get("memory", 0), **dict(res.custom)}
            bundle = {k: v for k, v in bundle.items() if v}
            ref = _remote_execute_across.remote(request, bundle, options, dict(res.labels))
            return Running(job, ref, tries_left, attempt)
        if res.labels:
            options["label_selector"] = dict(res.labels)
        ref = _remote_execute.options(**options).remote(request)
        return Running(job, ref, tries_left, attempt)

    def _wait(self, running: list[Running], finals: dict[str, RunStatus]) -> None:
        last_check = time.monotonic()
        silent_since: float | None = None
        while running:
            try:
                ready, _ = ray.wait([r.ref for r in running], num_returns=1, timeout=0.5)
            except Exception as e:  # the connection to the head broke (OSError, ConnectionError, RaySystemError)
                if self.cluster is not None and not ray_cluster.alive(self.cluster):
                    raise _Lost(f"Ray failed with {_first_line(e)} and the head does not answer") from None
                raise
            self.view.refresh()
            for item in [r for r in running if r.ref in ready]:
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

    def _outcome(self, item: Running) -> dict:
        try:
            return ray.get(item.ref)
        except ray.exceptions.TaskCancelledError:
            return {"cancelled": True}
        except ray.exceptions.RayError as e:
            # An exception the task raised comes wrapped, its first line the task's (coloured) name: tell the cause.
            cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e
            reason = f"the run's Ray task failed: {_first_line(cause)}"
            return {"exit_code": None, "reason": reason, "ray_error": str(e)}

    def _collect(self, item: Running, finals: dict[str, RunStatus]) -> Running | None:
        job, outcome = item.job, self._outcome(item)
        if outcome.get("cancelled"):
            finals[job.spec.name] = self._finish(job, JobState.CANCELLED, reason="cancelled")
            return None
        code, reason = outcome.get("exit_code"), outcome.get("reason", "")
        if job.store.read_result() is not None:
            # result.json is written last and whole: the run is complete even if its worker was killed after.
            note = "" if code == 0 else f"finished, then its worker ended with {reason or code}"
            finals[job.spec.name] = self._finish(job, JobState.SUCCEEDED, exit_code=code, reason=note)
            self.view.event(job.spec.name, "succeeded")
            return None
        if code == 0:
            reason = "worker exited 0 but wrote no valid result.json"
        detail = outcome.get("error_line", "")
        log = _log_note(job.store, outcome.get("ray_error", ""))
        full = f"{reason}: {detail} ({log})" if detail else f"{reason} ({log})"
        if code != USER_ERROR_EXIT and item.tries_left > 0:
            self.view.event(job.spec.name, f"failed, retrying ({item.tries_left} left): {full}")
            return self._submit(job, item.tries_left - 1)
        finals[job.spec.name] = self._finish(job, JobState.FAILED, exit_code=code, reason=full)
        self.view.event(job.spec.name, f"failed: {full}")
        return None

    def _finish(
        self, job: PlannedJob, state: JobState, exit_code: int | None = None, reason: str = "", keep_times: bool = False
    ) -> RunStatus:
        previous = job.store.read_status()
        base = previous.model_dump() if previous and previous.spec_hash == job.spec_hash else {}
        base.update(state=state, spec_hash=job.spec_hash, reason=reason, executor=job.executor.name)
        if not keep_times:
            base.update(exit_code=exit_code, finished_at=now())
        status = RunStatus.model_validate(base)
        job.store.write_status(status)
        return status

    def _cancel(self, running: list[Running], finals: dict[str, RunStatus], signal_name: str = "Ctrl-C") -> None:
        """Ctrl-C (or SIGTERM, SIGHUP): cancel every task (its executor kills the worker and its files reach the
        store), then mark each job cancelled; a job that finished before the stop keeps its result."""
        self.view.stop()
        for item in running:
            ray.cancel(item.ref, force=False)
        deadline = time.monotonic() + 30
        pending = [r.ref for r in running]
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1)
        why = "cancelled by `gridrun cancel`" if os.environ.get("GRIDRUN_SUBMISSION") else f"cancelled by {signal_name}"
        for item in running:
            name = item.job.spec.name
            if name in finals:
                continue
            # A job that finished before the stop reached it is a success, not a cancel: its result.json, written
            # last and whole, is there (its task may have been cancelled on its way out).
            if item.job.store.read_result() is not None:
                finals[name] = self._finish(item.job, JobState.SUCCEEDED, exit_code=0)
            else:
                finals[name] = self._finish(item.job, JobState.CANCELLED, reason=why)

    def _give_up(self, running: list[Running], finals: dict[str, RunStatus], why: str) -> None:
        """The head is gone: record every job that did not finish as failed, keep those that did."""
        reason = f"cluster lost: {why}"
        for item in running:
            name = item.job.spec.name
            finals[name] = self._finish(item.job, JobState.FAILED, reason=reason)
            self.view.event(name, f"failed: {reason}")
        unfinished = len(running)
        succeeded = sum(1 for s in finals.values() if s.state in (JobState.SUCCEEDED, JobState.SKIPPED))
        self.lost = ClusterLost(
            f"lost the Ray cluster at {self.cluster.address}: {why}. {succeeded} job(s) had finished and are "
            f"complete in {self.suite.url}; {unfinished} unfinished job(s) are marked failed with reason "
            "'cluster lost'. Fix: restart the cluster (or mend the network to its head) and run the same command "
            "again: finished jobs are skipped, the others resume from their last checkpoint in the store."
        )


__all__ = ["Attempt", "ClusterLost", "Driver", "JobPaths", "JobStore", "Request"]
