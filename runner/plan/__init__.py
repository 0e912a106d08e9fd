"""The plan: for each job, where it can run, with what executor, and whether it runs or is skipped.

A job that no node can ever fit is refused here, before anything starts: Ray alone would wait forever.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from runner.errors import UserError
from runner.execute import Choice, choose
from runner.plan import identity, models
from runner.plan.nodes import Node
from runner.prepare import Prepared
from runner.store import JobStore, ResultsStore
from runner.suite import LoadedSuite
from schemas import Identity, JobSpec, Owner, RunResult, RunStatus, Substitution
from schemas.registry import Parameters


@dataclass
class PlannedJob:
    """One job of the plan."""

    declared: JobSpec
    prepared: Prepared
    executor: Choice
    requested_executor: str
    spec_hash: str  # identity.digest()
    action: str  # run, skip or fail
    why: str
    store: JobStore  # the job's folder in the results store
    identity: Identity  # what the result depends on, recorded in spec.json
    code: str = ""  # the suite's code: folder, for a job that imports from it
    parameters: Parameters | None = None  # None: not counted here (user code, or its library not installed)

    @property
    def spec(self) -> JobSpec:
        return self.prepared.spec

    @property
    def substitutions(self) -> list[Substitution]:
        subs = list(self.prepared.substitutions)
        if self.requested_executor == "auto" and self.executor.name == "process":
            subs.append(Substitution(kind="executor", wanted="docker", used="process", reason=self.executor.reason))
        return subs


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether node `labels` satisfy a Ray label selector: 'v', '!v', 'in(a,b)', '!in(a,b)' per key."""
    for key, want in selector.items():
        negate = want.startswith("!")
        want = want.removeprefix("!")
        allowed = set(want[3:-1].split(",")) if want.startswith("in(") else {want}
        if (labels.get(key) in allowed) == negate:
            return False
    return True


def _fits(res, n: Node) -> bool:
    return (
        n.gpus >= res.gpus
        and n.cpus >= res.cpus
        and (res.memory_gb is None or n.memory_gb >= res.memory_gb)
        and all(n.resources.get(name, 0.0) >= amount for name, amount in res.custom.items())
        and labels_match(res.labels, n.labels)
    )


def placement(spec: JobSpec) -> str:
    """The custom resources and node labels a job asks for, in words ('' when none)."""
    res = spec.resources
    parts = [f"{name}: {amount:g}" for name, amount in res.custom.items()]
    parts += [f"{key}={value}" for key, value in res.labels.items()]
    return ", ".join(parts)


def fit_problem(spec: JobSpec, nodes: list[Node]) -> str:
    """'' when some node can hold the job, else why none can."""
    res = spec.resources
    holding = sum(1 for n in nodes if _fits(res, n))
    if holding >= res.nodes:
        return ""
    best_gpu = max((n.gpus for n in nodes), default=0)
    best_cpu = max((n.cpus for n in nodes), default=0)
    needs = f"{res.gpus:g} GPU(s) and {res.cpus:g} CPU(s)" + (f" and {res.memory_gb:g} GiB" if res.memory_gb else "")
    if res.nodes == 1 and res.world > 1:
        needs += f" for its {res.world} replicas"
    if holding:  # some nodes can hold a part, not as many as it spans
        return (
            f"needs {res.nodes} distinct nodes with {needs} each; {holding} of the cluster's {len(nodes)} node(s) can. "
            f"Fix: resources.nodes: {holding} or less, or add nodes"
        )
    if not res.custom and not res.labels:
        return f"needs {needs}; the largest node has {best_gpu:g} GPU(s) and {best_cpu:g} CPU(s)"
    offered = "; ".join(
        f"{n.host or n.node_id[:8]}: {n.gpus:g} GPU, {n.cpus:g} CPU"
        + "".join(f", {k}: {v:g}" for k, v in sorted(n.resources.items()) if k in res.custom)
        + "".join(f", {k}={v}" for k, v in sorted(n.labels.items()) if k in res.labels)
        for n in nodes
    )
    return f"needs {needs} on a node with {placement(spec)}; the nodes offer: {offered or 'none'}"


def check_links(loaded: LoadedSuite, results: ResultsStore, names: list[str]) -> None:
    """A UserError when a symbolic link leads a job's folder, or a file in it, out of the results folder.

    The whole run is refused rather than the job failed: its status, with the reason, could not be written in
    its folder; and reading that folder's status to plan would trust files from elsewhere."""
    suite = results.suite(loaded.name)
    linked = list(dict.fromkeys(p for name in names if (p := suite.job(name).link_problem())))
    if linked:
        raise UserError(f"{loaded.path}: nothing was run. " + "\n".join(linked))


def make_plan(
    loaded: LoadedSuite,
    prepared: list[Prepared],
    nodes: list[Node],
    results: ResultsStore,
    executor: str | None = None,
    force: bool = False,
    say=print,
    counts: Mapping[str, Parameters] | None = None,
) -> list[PlannedJob]:
    """Check fit, choose executors, and decide run or skip for each job. Reads only: the inputs were
    prepared (or previewed) and the images built before. `counts`: each job's parameters by name
    (runner.plan.models.counts); without them a twin's are its arithmetic."""
    specs = [p.spec for p in prepared]
    refused = [(s.name, p) for s in specs if (p := fit_problem(s, nodes))]
    if refused:
        lines = "\n  ".join(f"{name}: {problem}" for name, problem in refused)
        raise UserError(
            f"{loaded.path}: {len(refused)} job(s) cannot fit on any node of the cluster:\n  {lines}\n"
            "Fix: lower resources.gpus / resources.cpus, change resources.custom / resources.labels, pick a profile "
            "that fits (--profile cpu), or attach a larger cluster with --address."
        )
    check_links(loaded, results, [p.declared.name for p in prepared])
    suite = results.suite(loaded.name)
    holder = suite.holder()  # a live driver of this suite folder: its queued and running jobs are not stale
    plan = []
    runtimes: dict[tuple[str, str], tuple[dict[str, str], str]] = {}  # one look at the packages or daemon each
    # The code folder is read once, and only when some job imports from it.
    user_code = identity.folder_hash(loaded.code_files()) if any(p.spec.code_refs() for p in prepared) else ""
    for ready in prepared:
        declared = ready.declared
        choice = ready.executor or choose(executor or declared.executor, ready.spec, say=say)
        key = (ready.spec.framework, choice.image)
        if key not in runtimes:
            runtimes[key] = identity.runtime(ready.spec.framework, choice)
        ident = identity.identify(ready.spec, *runtimes[key], user_code=user_code)
        store = suite.job(declared.name)
        action, why = _decide(store, ident, ready, force, holder)
        old = store.read_spec() if action == "run" else None
        if old is not None and (old.spec_hash != ident.digest() or why.startswith("forced")) and store.read_result():
            why += f"; the earlier result is kept in {suite.aside_name(declared.name, old.spec_hash)}"
        plan.append(
            PlannedJob(
                declared,
                ready,
                choice,
                executor or declared.executor,
                ident.digest(),
                action,
                why,
                store,
                ident,
                str(loaded.code) if ready.spec.code_refs() and loaded.code else "",
                (counts or {}).get(declared.name) or models.arithmetic(ready.spec),
            )
        )
    return plan


def _decide(store: JobStore, ident: Identity, prepared: Prepared, force: bool, holder: Owner | None) -> tuple[str, str]:
    if prepared.missing:
        return "fail", f"missing input: {prepared.missing}"
    status, bad_status = store.read_checked("status.json", RunStatus)
    if status is None:  # an unusable status.json tells nothing of the run: it runs again, and the plan says why
        return "run", f"re-run: {bad_status}" if bad_status else "new"
    status = store.seen(status, holder)
    digest = ident.digest()
    same = status.spec_hash == digest
    # result.json is written last, whole, and removed when an attempt starts: with the same identity it is the
    # run's, finished, whatever its driver managed to record after (a stop, a kill) — never trained twice.
    if same and status.state.final:
        result, bad_result = store.read_checked("result.json", RunResult)
        if result is not None:
            return ("run", "forced (--force)") if force else ("skip", f"done with the same spec ({digest})")
        if bad_result:
            return "run", f"re-run: {bad_result}"
    if not same:
        return "run", identity.changes(store.read_spec(), ident, prepared.spec)
    return "run", f"resume after {status.state.value}"


def plan_table(plan: list[PlannedJob], title: str) -> Table:
    """The plan as a table: what runs where, and why."""
    table = Table(title=title, title_justify="left")
    for col in (
        "job",
        "framework",
        "model",
        "weights",
        "parameters",
        "epochs",
        "data",
        "resources",
        "executor",
        "action",
        "substitutes",
    ):
        table.add_column(col, overflow="fold")
    for p in plan:
        s = p.spec
        weights = s.model.weights if s.model.weights in ("none", "imagenet") else Path(s.model.weights).name
        if s.model.freeze_backbone:
            weights += " (frozen)"
        subs = "\n".join(f"[yellow]{x.kind}: {x.used} for {x.wanted}[/]" for x in p.substitutions)
        res = f"{s.resources.gpus:g} GPU, {s.resources.cpus:g} CPU"
        if s.resources.nodes > 1:
            res += f" per node\n[blue]{s.resources.world} replicas on {s.resources.nodes} nodes[/]"
        elif s.resources.world > 1:
            res += f"\n[blue]{s.resources.world} replicas[/]"
        if placement(s):
            res += f"\n[magenta]on {placement(s)}[/]"
        colour = {"run": "green", "skip": "cyan", "fail": "red"}[p.action]
        table.add_row(
            s.name,
            s.framework,
            s.model.arch + (f" w{s.model.classifier_width}" if s.model.classifier_width else ""),
            weights,
            _parameters(p.parameters),
            str(s.train.epochs),
            f"{s.dataset.name} {s.dataset.image_size}px",
            res,
            f"{p.executor.name}\n[dim]{p.executor.reason}[/]",
            f"[{colour}]{p.action}[/]\n[dim]{escape(p.why)}[/]",
            subs,
        )
    return table


def _parameters(counted: Parameters | None) -> str:
    """25.6 M; with a frozen backbone also what trains: 25.6 M\n20.5 k trainable."""
    if counted is None:
        return "[dim]not counted[/]"
    text = _short(counted.total)
    return text if counted.trainable == counted.total else f"{text}\n[dim]{_short(counted.trainable)} trainable[/]"


def _short(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(n)
