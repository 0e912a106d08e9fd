"""The core verbs: validate, plan, run, status, schema."""

import gc
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from runner.cli.app import app, console, err, note
from runner.errors import UserError
from runner.execute import reaper
from runner.plan import PlannedJob, check_links, disk, make_plan, models, plan_table
from runner.plan.search import PlannedSearch, plan_search, search_table
from runner.prepare import Cache, Preparer, build_images, default_cache, inputs
from runner.report.live import LiveView, SearchView
from runner.schedule import cluster as ray_cluster
from runner.schedule import head as kept_head
from runner.store import BAD_FILE_FIX, JobStore, ResultsStore, SuiteLock, SuiteStore, locate
from runner.store.lock import me
from runner.suite import LoadedSuite, load_suite
from schemas import JobSpec, JobState, Owner, RunStatus, Suite, registry
from schemas.base import excerpt

# What --gpus and --cpus may declare for the embedded Ray: whole numbers (Ray refuses fractions of a node's GPUs).
MAX_DECLARED_GPUS = 1024
MAX_DECLARED_CPUS = 65_536

SuiteArg = Annotated[Path, typer.Argument(help="Suite file, e.g. jobs/alexnet-challenge.yaml.")]
ResultsOpt = Annotated[
    str,
    typer.Option(
        "--results",
        help="Results root: a folder, a path every node mounts, or a URL (s3://bucket/prefix, gs://, abfs://).",
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Profile to apply; 'none' for none. Default: the suite's cpu_profile when the cluster has no GPU.",
    ),
]
ExecutorOpt = Annotated[str | None, typer.Option("--executor", help="auto, process or docker (default: each job's).")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Attach to a running Ray cluster (host:port, ray://host:port, auto).")
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache",
        help="Dataset and weights cache: a folder (default ~/.cache/gridrun) or a URL that nodes fetch from.",
    ),
]
GpusOpt = Annotated[
    float | None, typer.Option("--gpus", help="GPUs the embedded Ray declares (default: those it detects).")
]
CpusOpt = Annotated[int | None, typer.Option("--cpus", help="CPUs the embedded Ray declares (default: all).")]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="Allow a cluster beyond this machine without a token (see README: unsafe)."),
]


def _check_executor(executor: str | None) -> None:
    names = (registry.AUTO_EXECUTOR, *registry.EXECUTORS)
    if executor is not None and executor not in names:
        raise UserError(f"--executor {excerpt(executor)} is not one of {', '.join(names)}. Fix: pick one of those.")


def _check_declared(gpus: float | None, cpus: int | None) -> None:
    """--gpus and --cpus are whole numbers Ray can declare, refused here before Ray starts and fails on them."""
    if gpus is not None and not (math.isfinite(gpus) and gpus == int(gpus) and 0 <= gpus <= MAX_DECLARED_GPUS):
        raise UserError(
            f"--gpus {gpus:g} is not a number of GPUs: it must be a whole number from 0 to {MAX_DECLARED_GPUS}. "
            "Fix: give e.g. --gpus 0, --gpus 2, or leave it out to use the GPUs Ray detects."
        )
    if cpus is not None and not 1 <= cpus <= MAX_DECLARED_CPUS:
        raise UserError(
            f"--cpus {cpus} is not a number of CPUs: it must be a whole number from 1 to {MAX_DECLARED_CPUS:,} "
            "(jobs need at least one). Fix: give e.g. --cpus 4, or leave it out to use every CPU."
        )


def _pick_profile(loaded: LoadedSuite, asked: str | None, gpus: float) -> str | None:
    if asked == "none":
        return None
    if asked is not None:
        return asked
    auto = loaded.suite.cpu_profile
    if auto and gpus == 0:
        console.print(
            f"[bold yellow]The cluster has no GPU: using profile {auto!r}[/] (declared as the suite's "
            "cpu_profile; --profile none to run without it)."
        )
        return auto
    return None


def _shared_or_refuse(cluster: ray_cluster.Cluster, what: str, path: Path, fix: str) -> None:
    """On a cluster of several nodes, a local path must be one every node mounts: else one message."""
    from runner.schedule.shared import nodes_without

    lacking = nodes_without(path, cluster.nodes)
    if lacking:
        names = ", ".join(n.host or n.node_id[:12] for n in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
        raise UserError(
            f"{what} {path} is a folder of this machine that {len(lacking)} of the cluster's {len(cluster.nodes)} "
            f"nodes do not see ({names}), so their jobs could not write or read it. Nothing was run. Fix: {fix}"
        )


@dataclass(frozen=True)
class Planned:
    """What a plan decided: the suite's jobs, and its search if it has one."""

    loaded: LoadedSuite
    profile: str | None
    jobs: list[PlannedJob]
    search: PlannedSearch | None
    store: ResultsStore
    cache: Cache


@dataclass(frozen=True)
class Opened:
    """What a plan or a run checked before Ray starts: the suite, the results store and the cache."""

    loaded: LoadedSuite
    store: ResultsStore
    cache: Cache
    catalog: models.Catalog  # what the model libraries said of the suite's zoo models


@dataclass
class Phases:
    """Wall seconds of each phase of a command, in order: what `run` prints at its end and keeps in summary.json."""

    last: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        """The phase `name` ended now; the next starts."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def describe(self) -> str:
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        return f"{sum(self.seconds.values()):.1f} s: {parts}"


def _open(
    suite: Path, results: str, executor: str | None, address: str | None, cache: str | None, gpus, cpus
) -> Opened:
    """Every check that needs no cluster, done before Ray starts: options, the suite file, the stores, links."""
    _check_executor(executor)
    _check_declared(gpus, cpus)
    loaded = load_suite(suite)
    if address is not None and (gpus is not None or cpus is not None):
        raise UserError(
            "--gpus and --cpus describe the embedded Ray; with --address the cluster has its own. Fix: drop them."
        )
    if address is None and (gpus is not None or cpus is not None):
        found = kept_head.find(note)
        if found is not None:
            raise kept_head.declared_refused(found)
    # A message names the option it is about.
    try:
        store = ResultsStore.open(results, create=True)
    except UserError as e:
        raise UserError(f"--results: {e}") from None
    try:
        inputs_cache = Cache.open(cache)
    except UserError as e:
        raise UserError(f"--cache: {e}") from None
    check_links(loaded, store, [spec.name for spec in loaded.jobs()])  # make_plan checks again, under the profile
    catalog = _catalog(inputs_cache.local)
    models.check(loaded, catalog)
    return Opened(loaded, store, inputs_cache, catalog)


def _catalog(cache: Path) -> models.Catalog:
    return models.Catalog(cache, say=note)


def _prepare_plan(
    opened: Opened,
    profile: str | None,
    executor: str | None,
    address: str | None,
    gpus: float | None,
    cpus: int | None,
    force: bool,
    download: bool,
    insecure: bool = False,
    lock: SuiteLock | None = None,
    phases: Phases | None = None,
) -> Planned:
    """Reach the cluster, prepare (a run) or preview (a plan), and plan."""
    phases = phases or Phases()
    phases.lap("checks")
    loaded, store, inputs_cache = opened.loaded, opened.store, opened.cache
    suite_store = store.suite(loaded.name)
    holder = suite_store.holder()
    if holder is not None and lock is None:
        console.print(
            f"[yellow]{suite_store.url} is in use by another gridrun ({holder.describe()}): its jobs are shown as "
            "they stand now.[/]",
            highlight=False,
        )
    run_id = lock.owner.run_id if lock is not None else None
    cluster = ray_cluster.connect(address, num_gpus=gpus, num_cpus=cpus, insecure=insecure, run_id=run_id, say=note)
    phases.lap("Ray start")
    console.print(cluster.describe(), highlight=False)
    if store.local is not None:
        _shared_or_refuse(
            cluster,
            "--results",
            store.local,
            "give --results a storage URL (s3://bucket/prefix with `pip install 'gridrun[s3]'`, gs://, abfs://) "
            "or a path that every node mounts (NFS).",
        )
    chosen = _pick_profile(loaded, profile, cluster.gpus)
    resolved = loaded.search(chosen)
    specs = loaded.jobs(chosen) + ([resolved.base] if resolved is not None else [])
    if inputs_cache.remote is None and any(inputs.reads_cache(s, inputs_cache.local) for s in specs):
        _shared_or_refuse(
            cluster,
            "--cache",
            inputs_cache.local,
            "give --cache a storage URL (s3://bucket/cache) that every node can read, or a path every node mounts.",
        )
    say = lambda m: console.print(f"[bold yellow]{m}[/]", highlight=False)  # noqa: E731
    preparer = Preparer(inputs_cache.local, download=download, say=say)
    prepared = [preparer.prepare(spec) for spec in specs]
    if download:  # a run: inputs to the cache URL, images built; a plan only says what would happen
        inputs_cache.publish(prepared, say=say)
        build_images(prepared, executor, say=say)
    counts = models.counts([p.spec for p in prepared], opened.catalog)
    searched = None
    if resolved is not None:  # its base, prepared last, is the search's, not a job of the plan
        base = prepared.pop()
        searched = plan_search(loaded, resolved, base, cluster.nodes, store, executor, force, say=say)
    plan = make_plan(loaded, prepared, cluster.nodes, store, executor, force, say=say, counts=counts)
    for p in plan:
        if p.executor.name == "process" and p.requested_executor == "auto":
            console.print(
                f"[yellow]SUBSTITUTE job {p.spec.name}: process executor stands in for docker ({p.executor.reason})[/]",
                highlight=False,
            )
    if plan:
        console.print(plan_table(plan, f"plan of {loaded.name}" + (f" (profile {chosen})" if chosen else "")))
    if searched is not None:
        console.print(search_table(searched))
    specs_to_run = [p.spec for p in plan if p.action == "run"] + _trial_specs(searched)
    line, short = disk.check(specs_to_run, store.local, counts)
    if line:
        console.print(f"[bold yellow]{line}[/]" if short else line, highlight=False)
    phases.lap("plan")
    return Planned(loaded, chosen, plan, searched, store, inputs_cache)


def _trial_specs(searched: PlannedSearch | None) -> list[JobSpec]:
    """What the search's trials still to run will write, each sized as its base: for the disk check."""
    if searched is None or searched.action not in ("new", "resume"):
        return []
    left = searched.resolved.spec.trials - (searched.finished if searched.action == "resume" else 0)
    return [searched.prepared.spec] * left


@app.command()
def validate(suites: Annotated[list[Path], typer.Argument(help="Suite files.")]) -> None:
    """Check suite files: YAML, keys, types, values, names (zoo models asked of their library); every profile
    expanded."""
    catalog = _catalog(default_cache())
    for path in suites:
        loaded = load_suite(path)
        models.check(loaded, catalog)
        profiles = ", ".join(loaded.suite.profiles) or "none"
        search = loaded.suite.search
        trials = f", search {search.name!r} of {search.trials} trial(s)" if search is not None else ""
        console.print(
            f"[green]ok[/] {path}: suite {loaded.name!r}, {len(loaded.jobs())} job(s){trials}, profiles: {profiles}"
        )


@app.command()
def plan(
    suite: SuiteArg,
    results: ResultsOpt = "results",
    profile: ProfileOpt = None,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
    cache: CacheOpt = None,
    gpus: GpusOpt = None,
    cpus: CpusOpt = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    insecure: InsecureOpt = False,
) -> None:
    """Show what `run` would do: each job's resources, executor, and run or skip with why."""
    try:
        opened = _open(suite, results, executor, address, cache, gpus, cpus)
        _prepare_plan(opened, profile, executor, address, gpus, cpus, force, download=False, insecure=insecure)
    finally:
        ray_cluster.shutdown()


@app.command()
def run(
    suite: SuiteArg,
    results: ResultsOpt = "results",
    profile: ProfileOpt = None,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
    cache: CacheOpt = None,
    gpus: GpusOpt = None,
    cpus: CpusOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run jobs already done with the same spec.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report at the end.")] = True,
    insecure: InsecureOpt = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="When another gridrun runs this suite into these results, wait for it.")
    ] = False,
) -> None:
    """Run a suite on Ray: prepare inputs, schedule every job, gather results, write the report."""
    phases = Phases()
    opened = _open(suite, results, executor, address, cache, gpus, cpus)
    owner = me(uuid.uuid4().hex[:12])
    lock = _take(opened, owner, wait)
    try:
        planned = _prepare_plan(
            opened, profile, executor, address, gpus, cpus, force, download=True, insecure=insecure, lock=lock,
            phases=phases,
        )  # fmt: skip
        loaded, chosen, store, inputs_cache = planned.loaded, planned.profile, planned.store, planned.cache
        # Imports ray: only once the cluster is up, since Ray reads how to start the embedded one when imported.
        from runner.schedule.driver import Driver

        searched = planned.search
        if any(p.executor.name == "docker" for p in planned.jobs) or (searched and searched.executor.name == "docker"):
            from runner.execute.docker import cleanup_stale

            removed = cleanup_stale()
            if removed:
                console.print(f"removed {removed} container(s) left by an earlier crashed run")
        driver = Driver(loaded.name, loaded.text, chosen, store, inputs_cache, LiveView(console), owner)
        finals = driver.run(planned.jobs)
        searches = None
        if searched is not None and driver.lost is None:
            from runner.schedule.search import SearchDriver

            view = SearchView(console)
            searches = SearchDriver(loaded.name, store, inputs_cache, view, owner, chosen).run(searched)
        phases.lap("jobs")
    except BaseException:
        ray_cluster.shutdown()
        lock.release()
        raise
    suite_store = store.suite(loaded.name)
    with lock:
        # Ray's shutdown mostly waits for its processes to exit: the report is written meanwhile. Garbage holding
        # an object ref must not be collected while Ray shuts down in the other thread (the ref's release would
        # reach a core worker half gone, which ends the process with code 1): collected before, not during.
        gc.collect()
        gc.disable()
        stopping = threading.Thread(target=ray_cluster.shutdown, name="ray-shutdown")
        stopping.start()
        try:
            _write_summary(suite_store, loaded, chosen, planned.jobs, finals, searched, phases)
            if report:
                _report(suite_store)
        finally:
            stopping.join()
            gc.enable()
        phases.lap("report and Ray shutdown")
    console.print(status_table(suite_store.runs()))
    console.print(f"took {phases.describe()}", highlight=False)
    if driver.lost is not None:  # one message: what happened, what is in the results, how to go on
        raise driver.lost
    failed = [n for n, s in finals.items() if s.state not in (JobState.SUCCEEDED, JobState.SKIPPED)]
    failed += searches.failed if searches is not None else []
    total = len(finals) + (len(searches.trials) if searches is not None else 0)
    if searches is not None:
        best = f"; best {searches.best} ({searched.resolved.spec.metric.name} {searches.best_value:.4g})"
        console.print(f"search {searched.name}: {len(searches.trials)} trial(s){best if searches.best else ''}")
    if failed:
        err.print(f"[red]{len(failed)} of {total} job(s) did not succeed:[/] {', '.join(failed)}")
        raise typer.Exit(1)
    console.print(f"[green]all {total} job(s) done[/]; results in {suite_store.url}")


def _take(opened: Opened, owner: Owner, wait: bool) -> SuiteLock:
    """The suite folder's lock for this run, before Ray starts; jobs a dead driver left are marked interrupted."""
    suite_store = opened.store.suite(opened.loaded.name)
    lock = suite_store.lock(owner)
    lock.acquire(wait=wait, say=lambda m: console.print(f"[yellow]{m}[/]", highlight=False))
    try:
        dead: set[str] = set()
        for name, found in suite_store.settle(owner):
            now = suite_store.job(name).read_status()
            console.print(f"[yellow]{name}: {now.state.value if now else '?'}: the driver that ran it is gone[/]")
            if found.owner is not None and found.owner.host == owner.host:
                dead.add(found.owner.run_id)
        # What a killed driver started may outlive it by seconds (its watchdog sweeps after a grace): end it now,
        # so that no job has two writers.
        for run_id in dead:
            reaper.sweep(run_id)
    except BaseException:
        lock.release()
        raise
    return lock


def _report(suite: SuiteStore) -> None:
    from runner.report import write_suite_report

    try:
        written = write_suite_report(suite)
    except Exception as e:  # the runs are done and recorded; a report problem must not hide that
        err.print(f"[yellow]report not written: {type(e).__name__}: {e}[/]. Try `gridrun report {suite.url}`.")
        return
    for where in written:
        if where.endswith((".md", ".html")):
            console.print(f"report: {where}")


def _write_summary(
    suite: SuiteStore,
    loaded: LoadedSuite,
    profile: str | None,
    planned: list[PlannedJob],
    finals: dict[str, RunStatus],
    searched: PlannedSearch | None = None,
    phases: Phases | None = None,
) -> None:
    jobs = []
    for p in planned:
        result = p.store.read_result()
        status = finals.get(p.spec.name)
        jobs.append(
            {
                "job": p.spec.name,
                "state": status.state.value if status else "unknown",
                "reason": status.reason if status else "",
                "spec_hash": p.spec_hash,
                "executor": p.executor.name,
                "substitutions": [s.model_dump() for s in p.substitutions],
                "final_test_accuracy": result.final_test_accuracy if result else None,
                "best_test_accuracy": result.best_test_accuracy if result else None,
                "wall_seconds": result.timing.total_seconds if result else None,
            }
        )
    summary: dict[str, Any] = {"suite": loaded.name, "profile": profile, "source": str(loaded.path), "jobs": jobs}
    if phases is not None:  # up to the report: the command's own cost beyond its jobs
        summary["command_seconds"] = {name: round(s, 3) for name, s in phases.seconds.items()}
    if searched is not None:
        from runner.report.search import search_summary

        summary["search"] = search_summary(searched.store)
    suite.write_summary(summary)


def status_table(jobs: list[JobStore]) -> Table:
    """A table of the given job folders, read from their files."""
    table = Table(title="status", title_justify="left")
    for col in ("suite/job", "state", "attempts", "epochs", "test acc", "best (epoch)", "time", "reason"):
        table.add_column(col, overflow="fold")
    holders: dict[str, Owner | None] = {}  # per suite folder: its live driver, if any
    for job in jobs:
        if job.suite not in holders:
            holders[job.suite] = job.holder()
        files = job.read_files()
        status, result = job.seen(files.status, holders[job.suite]), files.result
        progress = job.read_progress() or {}
        state = status.state.value if status else ("unreadable" if files.problem_of("status.json") else "unknown")
        # A file that is there but unusable is named, with the fix, beside the reason the job recorded.
        reasons = [status.reason] if status and status.reason else []
        reasons += [f"{problem}; {BAD_FILE_FIX}" for problem in files.problems]
        done = len(result.epochs) if result else progress.get("epoch", 0)
        total = result.spec.train.epochs if result else progress.get("epochs", "?")
        table.add_row(
            f"{job.suite}/{job.label}",
            state,
            str(status.attempts) if status else "",
            f"{done}/{total}",
            f"{result.final_test_accuracy:.2%}" if result else "",
            f"{result.best_test_accuracy:.2%} ({result.best_epoch})" if result else "",
            f"{result.timing.total_seconds:.0f}s" if result else "",
            escape("\n".join(reasons)),  # a reason may hold brackets ([Errno 2], a list): text, not markup
        )
    return table


@app.command()
def status(
    results: Annotated[
        str, typer.Argument(help="Results root, one suite's folder or one job's: a path or a URL.")
    ] = "results",
) -> None:
    """Show the state of every job, read from the results store."""
    _, jobs = locate(results)
    console.print(status_table(jobs))


def _partial(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema with nothing required: defaults, profiles and jobs are partial job specs."""
    out = {k: (_partial(v) if isinstance(v, dict) else v) for k, v in schema.items() if k != "required"}
    if "$defs" in out:
        out["$defs"] = {k: _partial(v) for k, v in schema["$defs"].items()}
    return out


def suite_json_schema() -> dict[str, Any]:
    """JSON Schema of a suite file, with job fields typed, for editor completion."""
    schema = Suite.model_json_schema()
    job = _partial(JobSpec.model_json_schema())
    defs = {**schema.get("$defs", {}), **job.pop("$defs", {}), "PartialJob": job}
    schema["$defs"] = defs
    ref = {"$ref": "#/$defs/PartialJob"}
    props = schema["properties"]
    props["defaults"] = {**ref, "description": props["defaults"]["description"]}
    props["jobs"] = {"type": "array", "items": ref, "description": props["jobs"]["description"]}
    props["profiles"] = {"type": "object", "additionalProperties": ref, "description": props["profiles"]["description"]}
    return schema


@app.command()
def schema() -> None:
    """Print the JSON Schema of suite files (for editor completion)."""
    print(json.dumps(suite_json_schema(), indent=2))


def register(_app: typer.Typer) -> None:
    """Commands are registered on import (they decorate the shared app)."""
