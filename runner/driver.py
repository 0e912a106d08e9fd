"""Running a plan on Ray: one task per job, statuses kept, failures recorded, Ctrl-C honoured."""

import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import ray

from runner import __version__, executors
from runner.executors import Launch
from runner.live import LiveView
from runner.plan import PlannedJob
from runner.results import JobPaths, SuitePaths, write_json
from schemas import JobState, RunStatus, SpecFile

USER_ERROR_EXIT = 2


def now() -> datetime:
    return datetime.now(UTC)


def _execute(job_dir: str, cache: str, executor: str, run_id: str) -> dict:
    """The Ray task: start the job's worker with the GPUs Ray assigned, wait, report how it ended."""
    ctx = ray.get_runtime_context()
    gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
    paths = JobPaths(Path(job_dir))
    spec_file = paths.read_spec()
    previous = paths.read_status()
    status = RunStatus(
        state=JobState.RUNNING,
        spec_hash=spec_file.spec_hash,
        attempts=(previous.attempts if previous else 0) + 1,
        executor=executor,
        node=socket.gethostname(),
        gpu_ids=gpu_ids,
        queued_at=previous.queued_at if previous else None,
        started_at=now(),
    )
    write_json(paths.status, status)
    outcome = executors.get(executor).run(Launch(paths, Path(cache), spec_file, run_id, gpu_ids))
    return {"exit_code": outcome.exit_code, "reason": outcome.reason}


_remote_execute = ray.remote(_execute)


@dataclass
class Running:
    job: PlannedJob
    ref: "ray.ObjectRef"
    tries_left: int


def _last_error(log: Path) -> str:
    """The worker's own last 'error:' line (or the last line), to put in the status."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.lower().startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:500]


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

    def run(self, plan: list[PlannedJob]) -> dict[str, RunStatus]:
        """Run every job of the plan; return the final status of each."""
        self.suite.dir.mkdir(parents=True, exist_ok=True)
        self.suite.suite_file.write_text(self.suite_text)
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
        except KeyboardInterrupt:
            self._cancel(running, finals)
            raise
        finally:
            self.view.stop()
        return finals

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

    def _submit(self, job: PlannedJob, tries_left: int) -> Running:
        previous = job.paths.read_status()
        write_json(
            job.paths.status,
            RunStatus(
                state=JobState.QUEUED,
                spec_hash=job.spec_hash,
                attempts=previous.attempts if previous and previous.spec_hash == job.spec_hash else 0,
                executor=job.executor.name,
                queued_at=now(),
            ),
        )
        res = job.spec.resources
        options = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_retries": res.max_retries}
        if res.memory_gb:
            options["memory"] = int(res.memory_gb * 2**30)
        ref = _remote_execute.options(**options).remote(
            str(job.paths.dir), str(self.cache), job.executor.name, self.run_id
        )
        return Running(job, ref, tries_left)

    def _wait(self, running: list[Running], finals: dict[str, RunStatus]) -> None:
        while running:
            refs = [r.ref for r in running]
            done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            self.view.refresh()
            for ref in done:
                item = next(r for r in running if r.ref == ref)
                running.remove(item)
                retry = self._collect(item, finals)
                if retry is not None:
                    running.append(retry)

    def _collect(self, item: Running, finals: dict[str, RunStatus]) -> Running | None:
        job = item.job
        try:
            outcome = ray.get(item.ref)
            code, reason = outcome["exit_code"], outcome["reason"]
        except ray.exceptions.TaskCancelledError:
            finals[job.spec.name] = self._finish(job, JobState.CANCELLED, reason="cancelled")
            return None
        except ray.exceptions.RayError as e:
            code, reason = None, f"the run's Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
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
        """Ctrl-C: cancel every task (its executor kills the worker), mark each cancelled."""
        self.view.stop()
        for item in running:
            ray.cancel(item.ref, force=False)
        deadline = time.monotonic() + 20
        pending = [r.ref for r in running]
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1)
        for item in running:
            finals[item.job.spec.name] = self._finish(item.job, JobState.CANCELLED, reason="cancelled by Ctrl-C")
