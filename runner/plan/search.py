"""The plan of a suite's search: its base job fitted and given an executor, and whether the search starts, resumes,
is done, or starts again because what it searches changed. Reads only."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from runner.errors import UserError
from runner.execute import Choice, choose
from runner.plan import fit_problem, identity
from runner.plan.nodes import Node
from runner.prepare import Prepared
from runner.store import ResultsStore, SearchStore
from runner.suite import LoadedSuite, ResolvedSearch
from schemas import Identity, JobSpec, JobState


@dataclass
class PlannedSearch:
    """The search of the plan."""

    resolved: ResolvedSearch
    prepared: Prepared  # its base: as declared, and as run with any declared substitute
    executor: Choice
    identity: Identity  # the base's: every trial shares its code, versions and image
    digest: str  # what the search depends on: a resume needs the same
    action: str  # new, resume, done or fail
    why: str
    store: SearchStore
    finished: int = 0  # trials finished so far (succeeded or stopped early)
    code: str = ""  # the suite's code: folder, when the base imports from it

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def epochs(self) -> int:
        return self.prepared.spec.train.epochs

    def definition(self) -> dict[str, Any]:
        """search.json: what the search is, so that a later run knows whether it may resume it."""
        return {
            "search": self.resolved.spec.model_dump(mode="json"),
            "digest": self.digest,
            "profile": self.resolved.profile,
            "base": self.prepared.declared.model_dump(mode="json"),
            "spec": self.prepared.spec.model_dump(mode="json"),
            "identity": self.identity.model_dump(mode="json"),
            "trials": self.resolved.spec.trials,
            "epochs": self.epochs,
            "finished": False,
        }


def search_digest(resolved: ResolvedSearch, prepared: Prepared, ident: Identity) -> str:
    """The hash of everything a search's trials depend on but their drawn values: its block, its base as run,
    the worker's code, the versions and the image."""
    parts = {
        "search": resolved.spec.model_dump(mode="json"),
        "base": prepared.spec.model_dump(mode="json"),
        "code": ident.code,
        "versions": ident.versions,
        "image": ident.image,
        "user_code": ident.user_code,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def plan_search(
    loaded: LoadedSuite,
    resolved: ResolvedSearch,
    prepared: Prepared,
    nodes: list[Node],
    results: ResultsStore,
    executor: str | None = None,
    force: bool = False,
    say=print,
) -> PlannedSearch:
    """Fit, executor and action of the search; a base no node can hold is refused, as a job would be."""
    spec = prepared.spec
    problem = fit_problem(spec, nodes)
    if problem:
        raise UserError(
            f"{loaded.path}: the trials of search {resolved.name!r} cannot fit on any node of the cluster: {problem}. "
            "Fix: lower resources.gpus / resources.cpus of its base, pick a profile that fits (--profile cpu), "
            "or attach a larger cluster with --address."
        )
    if spec.resources.labels:
        raise UserError(
            f"{loaded.path}: search {resolved.name!r}: its base asks for node labels (resources.labels), which "
            "gridrun does not hand to Ray Tune's trials. Fix: use resources.custom (a custom resource only those "
            "nodes offer) in the base job, or remove resources.labels."
        )
    choice = prepared.executor or choose(executor or prepared.declared.executor, spec, say=say)
    user_code = identity.folder_hash(loaded.code_files()) if spec.code_refs() else ""
    ident = identity.identify(spec, *identity.runtime(spec.framework, choice), user_code=user_code)
    digest = search_digest(resolved, prepared, ident)
    store = results.suite(loaded.name).search(resolved.name)
    action, why, finished = _decide(store, digest, resolved, prepared, ident, force)
    code = str(loaded.code) if spec.code_refs() and loaded.code else ""
    return PlannedSearch(resolved, prepared, choice, ident, digest, action, why, store, finished, code)


def _finished(store: SearchStore) -> int:
    done = (JobState.SUCCEEDED, JobState.STOPPED)
    return sum(1 for t in store.trials() if (s := t.read_status()) is not None and s.state in done)


def _changes(old: dict[str, Any], resolved: ResolvedSearch, prepared: Prepared, ident: Identity) -> str:
    """What changed since the search in the store was started, part by part, in words."""
    reasons = []
    if old.get("search") != resolved.spec.model_dump(mode="json"):
        reasons.append("the search block changed")
    try:
        before_spec = JobSpec.model_validate(old["spec"])
        before = Identity.model_validate(old["identity"])
    except (KeyError, TypeError, ValueError):
        return "; ".join(reasons) or "search.json is not what gridrun writes"
    if before_spec != prepared.spec:
        reasons.append(f"its base changed: {identity.spec_changes(before_spec, prepared.spec)}")
    if before.code != ident.code:
        reasons.append("trainer code changed since it started")
    if before.user_code != ident.user_code:
        reasons.append("the suite's code: folder changed since it started")
    if before.image != ident.image:
        reasons.append("image changed")
    elif before.versions != ident.versions:
        reasons += [
            f"{p} {before.versions.get(p, 'none')} → {ident.versions.get(p, 'none')}"
            for p in sorted(before.versions.keys() | ident.versions.keys())
            if before.versions.get(p) != ident.versions.get(p)
        ]
    return "; ".join(reasons) or "its identity changed"


def _decide(
    store: SearchStore, digest: str, resolved: ResolvedSearch, prepared: Prepared, ident: Identity, force: bool
) -> tuple[str, str, int]:
    trials = resolved.spec.trials
    if prepared.missing:
        return "fail", f"missing input: {prepared.missing}", 0
    old = store.read_definition()
    if old is None:
        return "new", "new", 0
    if old.get("digest") != digest:
        what = _changes(old, resolved, prepared, ident)
        return "new", f"{what}: starts again; the earlier search is kept in _previous/", 0
    if force:
        return "new", "forced (--force): starts again; the earlier search is kept in _previous/", 0
    finished = _finished(store)
    if old.get("finished"):
        return "done", f"done with the same search ({finished} of {trials} trials finished)", finished
    if not store.has_tune():
        return "new", "no Tune experiment to resume: starts again", 0
    return "resume", f"resume: {finished} of {trials} trials finished", finished


def search_table(p: PlannedSearch) -> Table:
    """The search as the plan shows it: each axis of its space, and how many trials, scheduled how."""
    s = p.resolved.spec
    colour = {"new": "green", "resume": "green", "done": "cyan", "fail": "red"}[p.action]
    grid = [len(d.values) for d in s.space.values() if d.kind == "grid"]
    trials = f"{s.trials} ({s.samples} samples" + (f" x {' x '.join(map(str, grid))} grid)" if grid else ")")
    base = f"job {s.base}" if s.base else "the defaults"
    lines = [
        ("base", f"{base}: {p.prepared.spec.framework} {p.prepared.spec.model.arch}, {p.epochs} epochs"),
        ("trials", trials),
        ("metric", f"{s.metric.name} ({'maximised' if s.metric.direction == 'max' else 'minimised'})"),
        ("scheduler", s.scheduler.describe(p.epochs)),
        ("searcher", f"{s.searcher}, seed {s.seed}"),
        ("at once", str(s.max_concurrent) if s.max_concurrent else "as many as the cluster holds"),
        ("executor", f"{p.executor.name} [dim]({escape(p.executor.reason)})[/]"),
        ("action", f"[{colour}]{p.action}[/] [dim]{escape(p.why)}[/]"),
    ]
    table = Table(title=f"search {p.name} (trials in {p.store.url})", title_justify="left")
    table.add_column("field", overflow="fold")
    table.add_column("values", overflow="fold")
    for key, dim in s.space.items():
        table.add_row(f"[bold]{key}[/]", escape(dim.describe()))
    for key, value in lines:
        table.add_row(f"[dim]{key}[/]", value)
    return table
