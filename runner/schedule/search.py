"""A suite's search on Ray Tune: Tune draws and schedules the trials, each trial runs as a gridrun job.

Each trial is a Tune class Trainable whose actor writes the trial's job folder (results/<suite>/<search>/<trial>/,
the full contract: spec, status, progress, result, log, events, checkpoints) and starts its worker through the
same executors as any job; each `step` waits for the worker's next epoch (its progress.json) and hands that epoch's
metrics to Tune. When ASHA stops a trial, Tune stops its actor, whose `cleanup` ends the worker (its process
group, or its container) at once; the driver records the trial as stopped, with the rung, epoch and metric.

Tune's experiment lives in results/<suite>/<search>/tune/. Ctrl-C (or SIGTERM, SIGHUP) stops the search the way
Tune stops one on SIGINT: its state saved, the running trials' workers ended, those trials marked cancelled; the
same command again restores it (Tuner.restore): finished trials are not run again, unfinished ones start again on
their job folders, whose workers resume from their own last checkpoint.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from runner import __version__
from runner.errors import Stopped, note_stop, stop_name, stop_signal
from runner.plan.search import PlannedSearch
from runner.prepare import Cache, inputs
from runner.report.live import SearchView
from runner.schedule.driver import Attempt, Request, _log_note, now
from runner.store import JobStore, ResultsStore, SearchStore, read_json
from runner.suite import with_values
from schemas import (
    EarlyStop,
    Identity,
    JobSpec,
    JobState,
    Owner,
    RunResult,
    RunStatus,
    SpecFile,
    Substitution,
    TrialInfo,
)
from schemas.search import SearchSpec

POLL_S = 0.2  # how often a trial looks for its worker's next epoch
STOP_WAIT_S = 60  # how long a stopped trial waits for its worker to end (a container's stop takes seconds)
# Tune's own loggers would write a second result.json, CSV and events per trial beside gridrun's; its SIGINT
# handler stays: it saves the experiment's state before it stops, which is what a resume continues from.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_RESULT_BUFFER_LENGTH": "1", "RAY_AIR_NEW_OUTPUT": "0"}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one run of a search is given (picklable; it travels to each trial's actor)."""

    results: str
    suite: str
    search: str
    cache: str
    executor: str
    image: str
    run_id: str
    owner: Owner
    profile: str | None
    declared_json: str  # the base as declared
    spec_json: str  # the base as run (declared substitutes applied)
    substitutions_json: list[str]
    code: str
    versions: dict[str, str]
    keys: list[str]  # the space's dotted keys, in order
    width: int  # digits of a trial's number
    wanted: list[inputs.Input] = field(default_factory=list)
    user_code: str = ""  # the hash of the suite's code: folder, when the base imports from it
    code_folder: str = ""  # that folder


def _plain(value: Any) -> Any:
    """A value Tune drew (a numpy scalar) as plain Python, for JSON and pydantic."""
    return value.item() if hasattr(value, "item") else value


def trial_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


class GridrunTrial(tune.Trainable):
    """One trial: a gridrun job whose worker runs beside this actor; one `step` per epoch it finishes."""

    def setup(self, config: dict[str, Any], setup: TrialSetup) -> None:
        self.s = setup
        self.values = {key: _plain(config[key]) for key in setup.keys}
        name = self.trial_name
        spec = with_values(JobSpec.model_validate_json(setup.spec_json), self.values, name)
        declared = with_values(JobSpec.model_validate_json(setup.declared_json), self.values, name)
        ident = Identity(
            spec=spec.digest(), code=setup.code, versions=setup.versions, image=setup.image, user_code=setup.user_code
        )
        self.spec_file = SpecFile(
            suite=setup.suite,
            job=name,
            spec_hash=ident.digest(),
            code_version=__version__,
            profile=setup.profile,
            declared=declared,
            spec=spec,
            substitutions=[Substitution.model_validate_json(j) for j in setup.substitutions_json],
            executor=setup.executor,
            image=setup.image,
            identity=ident,
            code=setup.code_folder,
            trial=TrialInfo(search=setup.search, number=trial_number(name), values=self.values),
        )
        self.epochs = spec.train.epochs
        self.store = ResultsStore.open(setup.results, check=False).suite(setup.suite).search(setup.search).trial(name)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.outcome: dict[str, Any] | None = None
        self.attempt: Attempt | None = None
        old = self.store.read_spec()
        same = old is not None and old.spec_hash == self.spec_file.spec_hash
        # Finished before (its driver stopped before Tune recorded it): its epochs are told again, not trained.
        self.finished = self.store.read_result() if same else None
        progress = (self.store.read_progress() or {}) if same else {}
        self.reported = int(progress.get("epoch", 0) or 0)  # epochs Tune has had (or that a resume need not repeat)
        if self.finished is not None:
            self.reported = 0
            return
        if old is not None and not same:
            self.store.remove()  # another trial's leftovers under this name (a search started again)
        self.store.clear("result.json")
        self.store.write_spec(self.spec_file)
        previous = self.store.read_status()
        queued = RunStatus(
            state=JobState.QUEUED,
            spec_hash=self.spec_file.spec_hash,
            attempts=previous.attempts if previous and previous.spec_hash == self.spec_file.spec_hash else 0,
            executor=setup.executor,
            queued_at=now(),
            owner=setup.owner,
        )
        self.store.write_status(queued)
        request = Request(
            results=setup.results,
            suite=setup.suite,
            job=name,
            cache=setup.cache,
            executor=setup.executor,
            run_id=setup.run_id,
            attempt=queued.attempts + 1,
            spec_json=self.spec_file.model_dump_json(),
            status_json=queued.model_dump_json(),
            wanted=setup.wanted,
            search=setup.search,
        )
        self.attempt = Attempt(request)
        early = self.attempt.open()
        if early is not None:
            self._fail(early.get("exit_code"), early["reason"])
        self.thread = threading.Thread(target=self._work, name=f"gridrun-{name}", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        assert self.attempt is not None
        try:
            outcome = self.attempt.run(self.stop)
            self.outcome = {"exit_code": outcome.exit_code, "reason": outcome.reason, "stopped": outcome.stopped}
        except BaseException as e:  # the executor itself failed: the trial fails with it
            self.outcome = {"exit_code": None, "reason": f"{type(e).__name__}: {e}", "stopped": False}

    def _record(self, epoch: int, metrics: dict[str, Any], done: bool) -> dict[str, Any]:
        self.reported = epoch
        return {**metrics, "epoch": epoch, "epochs": self.epochs, "done": done}

    def step(self) -> dict[str, Any]:
        if self.finished is not None:
            record = self.finished.epochs[self.reported]
            return self._record(record.epoch, record.model_dump(), record.epoch >= self.finished.epochs[-1].epoch)
        assert self.attempt is not None and self.attempt.paths is not None
        while True:
            ended = self.outcome is not None
            progress = read_json(self.attempt.paths.progress)
            epoch = progress.get("epoch", 0) if isinstance(progress, dict) else 0
            # The last epoch is told once the worker has ended: ASHA ends a trial that reaches its last epoch, and
            # its worker must have written result.json by then.
            if isinstance(epoch, int) and self.reported < epoch < self.epochs:
                return self._record(epoch, progress, done=False)
            if ended:
                return self._ended()
            time.sleep(POLL_S)

    def _ended(self) -> dict[str, Any]:
        """The worker is done: the rest of its epochs from result.json (the last one ends the trial), or a failure."""
        assert self.attempt is not None and self.outcome is not None
        copy_problem, error_line = self.attempt.close()
        result = self.store.read_result()
        if result is not None and not copy_problem:
            rest = [e for e in result.epochs if e.epoch > self.reported]
            if rest:
                return self._record(rest[0].epoch, rest[0].model_dump(), done=rest[0].epoch >= result.epochs[-1].epoch)
            return self._record(self.reported, result.epochs[-1].model_dump(), done=True)
        reason = copy_problem or self.outcome["reason"] or "worker exited 0 but wrote no valid result.json"
        detail = "" if self.outcome["stopped"] else error_line
        log = _log_note(self.store)
        self._fail(self.outcome["exit_code"], f"{reason}: {detail} ({log})" if detail else f"{reason} ({log})")
        raise AssertionError("unreachable")

    def _fail(self, exit_code: int | None, reason: str) -> None:
        """Record the trial as failed, with the reason a person can act on, and end it in Tune."""
        status = self.store.read_status()
        base = status.model_dump() if status is not None else {"spec_hash": self.spec_file.spec_hash}
        base.update(state=JobState.FAILED, exit_code=exit_code, reason=reason, finished_at=now())
        self.store.write_status(RunStatus.model_validate(base))
        raise TrialFailed(reason)

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, int]:
        """What Tune keeps of a trial: the epochs it has had. The model's checkpoints are the job's own, in its
        folder, where its worker resumes from."""
        return {"epoch": self.reported}

    def load_checkpoint(self, checkpoint: dict[str, int]) -> None:
        self.reported = max(self.reported, int(checkpoint.get("epoch", 0)))

    def cleanup(self) -> None:
        """Tune stops this trial (ASHA, the end of the search, Ctrl-C): its worker is ended before the actor is."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(STOP_WAIT_S)
        if self.attempt is not None:
            self.attempt.close()


class TrialFailed(RuntimeError):
    """A trial's worker failed; its status.json says why."""


# --- the driver side -------------------------------------------------------------------------------------------


class _Namer:
    """Names each trial <search>-<number> in the order Tune makes them, kept in the search's trials.json so that a
    restored search (whose Tune state holds this object as first pickled) goes on counting."""

    def __init__(self, results: str, suite: str, search: str, width: int) -> None:
        self.results, self.suite, self.search, self.width = results, suite, search, width

    def __call__(self, trial: Any) -> str:
        store = ResultsStore.open(self.results, check=False).suite(self.suite).search(self.search)
        names = store.names()
        if trial.trial_id not in names:
            names[trial.trial_id] = f"{self.search}-{len(names) + 1:0{self.width}d}"
            store.write_names(names)
        return names[trial.trial_id]


_running: "SearchDriver | None" = None  # the search this process runs: Tune's callbacks report to it


class _Events(tune.Callback):
    """Tune's events, handed to the running SearchDriver. Holds nothing: Tune pickles its callbacks with the
    experiment, and a restored experiment calls the driver of the run that restored it."""

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if _running is not None:
            _running.view.refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if _running is not None:
            _running.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _running is not None:
            _running.complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _running is not None:
            _running.error(trial)


@dataclass
class SearchOutcome:
    """How the search ended: the final state of each trial and the best one."""

    planned: PlannedSearch
    trials: dict[str, RunStatus]
    best: str | None = None
    best_value: float | None = None

    @property
    def failed(self) -> list[str]:
        """Trials that neither succeeded nor were stopped early; the search itself when it could not run."""
        failed = [n for n, s in self.trials.items() if s.state not in (JobState.SUCCEEDED, JobState.STOPPED)]
        return failed + ([self.planned.name] if self.planned.action == "fail" else [])


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """The space as Tune's sampling objects, by dotted key (flat: Tune keeps such keys as they are)."""
    out: dict[str, Any] = {}
    for key, dim in spec.space.items():
        if dim.kind == "uniform":
            out[key] = tune.uniform(*dim.values)
        elif dim.kind == "loguniform":
            out[key] = tune.loguniform(*dim.values)
        elif dim.kind == "randint":
            out[key] = tune.randint(dim.values[0], dim.values[1] + 1)  # gridrun's high is included; Tune's is not
        elif dim.kind == "choice":
            out[key] = tune.choice(dim.values)
        else:
            out[key] = tune.grid_search(dim.values)
    return out


def _scheduler(spec: SearchSpec, epochs: int):
    s = spec.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=s.grace, reduction_factor=s.factor)


def _searcher(spec: SearchSpec):
    if spec.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=spec.seed)
    # A SearchAlgorithm, not a Searcher: it limits its trials itself (Tune ignores max_concurrent_trials for it).
    return BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent or 0)


@contextlib.contextmanager
def _tune_stops_on_term() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the search as Ctrl-C does, through Tune's own SIGINT handler (which saves the
    experiment's state first); the signal that came is remembered for the exit code."""

    def forward(signum: int, _frame: object) -> None:
        note_stop(signum)
        signal.raise_signal(signal.SIGINT)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, forward)
    # Tune logs each failed trial's traceback; gridrun records the reason in the trial's status and shows it live.
    quiet = [logging.getLogger(name) for name in ("ray.tune", "ray.train", "ray.air")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


class SearchDriver:
    """Runs one planned search on the connected Ray, and keeps its trials' status files true."""

    def __init__(
        self, suite_name: str, results: ResultsStore, cache: Cache, view: SearchView, owner: Owner, profile: str | None
    ) -> None:
        self.results = results
        self.suite = results.suite(suite_name)
        self.cache = cache
        self.view = view
        self.owner = owner
        self.profile = profile
        self.planned: PlannedSearch | None = None
        self.best_at: dict[int, float] = {}  # epoch -> the best metric any trial reported at it, this run

    @property
    def store(self) -> SearchStore:
        assert self.planned is not None
        return self.planned.store

    def run(self, planned: PlannedSearch) -> SearchOutcome:
        global _running
        self.planned = planned
        if planned.action == "done":
            return self._outcome()
        if planned.action == "fail":
            self.view.event(planned.name, f"not run: {planned.why}")
            return SearchOutcome(planned, {})
        if planned.action == "new":
            self._start_clean()
        tuner = self._tuner(planned, restore=planned.action == "resume")
        os.environ.update(TUNE_ENV)
        self.view.start(planned.store, planned.resolved.spec, planned.epochs)
        _running = self
        try:
            with _tune_stops_on_term():
                tuner.fit()
        finally:
            _running = None
            self.view.stop()
        if self._unfinished():
            self._cancel()
            signum = stop_signal()
            raise Stopped(signum) if signum != signal.SIGINT else KeyboardInterrupt()
        outcome = self._outcome()
        definition = planned.definition()
        # A search with failed trials is not done: the same command again runs them again (restart_errored).
        definition["finished"] = not outcome.failed
        self.store.write_definition(definition)
        return outcome

    def _start_clean(self) -> None:
        """A new search: an earlier one of this name (another block or base, or --force) is kept aside, whole."""
        planned = self.planned
        assert planned is not None
        old = self.store.read_definition()
        if old is not None or self.store.storage.exists(""):
            where = self.suite.set_aside(planned.name, str((old or {}).get("digest", "unknown")))
            self.view.event(planned.name, f"earlier search kept in {self.suite.url}/{where}")
        self.store.write_definition(planned.definition())

    def _setup(self, planned: PlannedSearch) -> TrialSetup:
        prepared = planned.prepared
        return TrialSetup(
            results=self.results.url,
            suite=self.suite.name,
            search=planned.name,
            cache=self.cache.url,
            executor=planned.executor.name,
            image=planned.executor.image,
            run_id=self.owner.run_id,
            owner=self.owner,
            profile=self.profile,
            declared_json=prepared.declared.model_dump_json(),
            spec_json=prepared.spec.model_dump_json(),
            substitutions_json=[s.model_dump_json() for s in prepared.substitutions],
            code=planned.identity.code,
            versions=planned.identity.versions,
            keys=list(planned.resolved.spec.space),
            width=len(str(planned.resolved.spec.trials)),
            wanted=inputs.of_job(prepared.spec, self.cache.local) if self.cache.remote is not None else [],
            user_code=planned.identity.user_code,
            code_folder=planned.code,
        )

    def _tuner(self, planned: PlannedSearch, restore: bool) -> tune.Tuner:
        spec, base = planned.resolved.spec, planned.prepared.spec
        res = base.resources
        resources: dict[str, float] = {"cpu": res.cpus, "gpu": res.gpus, **res.custom}
        if res.memory_gb:
            resources["memory"] = int(res.memory_gb * 2**30)
        trainable = tune.with_resources(tune.with_parameters(GridrunTrial, setup=self._setup(planned)), resources)
        path, name, filesystem = planned.store.tune_storage()
        if restore:
            return tune.Tuner.restore(
                f"{path.rstrip('/')}/{name}",
                trainable,
                resume_unfinished=True,
                restart_errored=True,
                storage_filesystem=filesystem,
            )
        namer = _Namer(self.results.url, self.suite.name, planned.name, len(str(spec.trials)))
        return tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric.name,
                mode=spec.metric.direction,
                num_samples=spec.samples,
                scheduler=_scheduler(spec, base.train.epochs),
                search_alg=_searcher(spec),
                max_concurrent_trials=spec.max_concurrent if spec.searcher != "random" else None,
                trial_name_creator=namer,
                trial_dirname_creator=namer,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=path,
                storage_filesystem=filesystem,
                verbose=0,
                callbacks=[_Events()],
                failure_config=tune.FailureConfig(max_failures=res.max_retries),
            ),
        )

    # --- Tune's events ---

    def _trial(self, trial: Any) -> JobStore:
        return self.store.trial(str(trial))

    def result(self, trial: Any, result: dict) -> None:
        """A trial finished an epoch: the best value at that epoch so far, for a stopped trial's record."""
        assert self.planned is not None
        metric = self.planned.resolved.spec.metric
        epoch, value = result.get("epoch"), result.get(metric.name)
        if isinstance(epoch, int) and isinstance(value, int | float):
            best = self.best_at.get(epoch)
            if best is None or metric.better(value, best):
                self.best_at[epoch] = float(value)

    def complete(self, trial: Any) -> None:
        """Tune ended a trial: it ran all its epochs (result.json is there), or the scheduler stopped it early."""
        job = self._trial(trial)
        if job.read_result() is not None:
            self._finish(job, JobState.SUCCEEDED, exit_code=0)
            self.view.event(job.name, "succeeded")
            return
        assert self.planned is not None
        spec, epochs = self.planned.resolved.spec, self.planned.epochs
        last = dict(trial.last_result or {})
        epoch = int(last.get("epoch") or 1)
        value = last.get(spec.metric.name)
        rung = max(1, sum(1 for m in spec.scheduler.rungs(epochs) if m <= epoch))
        stop = EarlyStop(
            scheduler=spec.scheduler.name,
            rung=rung,
            epoch=epoch,
            epochs=epochs,
            metric=spec.metric.name,
            value=float(value) if isinstance(value, int | float) else None,
            best=self.best_at.get(epoch),
        )
        shown = f"{stop.value:.4g}" if stop.value is not None else "?"
        best = f", best at that epoch {stop.best:.4g}" if stop.best is not None else ""
        reason = (
            f"stopped early by {stop.scheduler} at rung {rung} (epoch {epoch} of {epochs}): {stop.metric} {shown}{best}"
        )
        self._finish(job, JobState.STOPPED, reason=reason, early_stop=stop)
        self.view.event(job.name, reason)

    def error(self, trial: Any) -> None:
        """A trial failed: its actor recorded why (TrialFailed), or died before it could."""
        job = self._trial(trial)
        status = job.read_status()
        if status is None or not status.state.final:
            where = trial.error_file
            reason = f"the trial's Ray actor failed: {_last_line(where)} (Tune's error file: {where})"
            self._finish(job, JobState.FAILED, reason=reason)
            status = job.read_status()
        self.view.event(job.name, f"failed: {status.reason if status else ''}")

    def _finish(self, job: JobStore, state: JobState, exit_code: int | None = None, **fields: Any) -> None:
        previous = job.read_status()
        if previous is None:
            return
        base = previous.model_dump()
        base.update({"state": state, "exit_code": exit_code, "finished_at": now(), "reason": "", "early_stop": None})
        base.update(fields)
        job.write_status(RunStatus.model_validate(base))

    # --- the end ---

    def _unfinished(self) -> bool:
        """Whether the search stopped before all its trials ended: Tune returns early only when stopped."""
        assert self.planned is not None
        final = [t for t in self.store.trials() if (s := t.read_status()) is not None and s.state.final]
        return len(final) < self.planned.resolved.spec.trials

    def _cancel(self) -> None:
        """Mark each trial left queued or running as cancelled (succeeded if its result.json made it)."""
        why = f"cancelled by {stop_name()}: run the same command again to resume the search"
        for job in self.store.trials():
            status = job.read_status()
            if status is None or status.state.final:
                continue
            if job.read_result() is not None:
                self._finish(job, JobState.SUCCEEDED, exit_code=0)
            else:
                self._finish(job, JobState.CANCELLED, reason=why)

    def _outcome(self) -> SearchOutcome:
        assert self.planned is not None
        metric = self.planned.resolved.spec.metric
        trials: dict[str, RunStatus] = {}
        best, best_value = None, None
        for job in self.store.trials():
            status = job.read_status()
            if status is None:
                continue
            trials[job.name] = status
            result = job.read_result()
            value = _final_metric(result, metric.name) if result is not None else None
            if value is not None and (best_value is None or metric.better(value, best_value)):
                best, best_value = job.name, value
        return SearchOutcome(self.planned, trials, best, best_value)


def _last_line(path: str | None) -> str:
    try:
        text = Path(path).read_text(errors="replace") if path else ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "no error recorded"


def _final_metric(result: RunResult, name: str) -> float | None:
    if not result.epochs:
        return None
    return float(getattr(result.epochs[-1], name))


__all__ = ["GridrunTrial", "SearchDriver", "SearchOutcome", "param_space"]
