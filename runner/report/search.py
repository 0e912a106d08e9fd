"""The report's search section: the best trial and its values, every trial ranked by the metric, a
parallel-coordinates plot of the values against the metric, the curves of the best trials, and how many epochs
early stopping saved against running every trial to its end."""

import math
from dataclasses import dataclass
from typing import Any

from runner.report.document import MISSING, Cell, Figure, Section, Table, pct
from runner.report.plots import Axis, Line, Plotter
from runner.report.runs import Run, read_run
from runner.store import SearchStore, SuiteStore
from schemas import JobState, SearchSpec

BEST_CURVES = 3  # trials whose curves the section draws


@dataclass(frozen=True)
class Trial:
    """One trial as the report reads it."""

    run: Run
    number: int
    values: dict[str, Any]
    value: float | None  # its metric at the last epoch it ran
    epochs: int  # epochs it ran

    @property
    def name(self) -> str:
        return self.run.job

    @property
    def stopped(self) -> bool:
        return self.run.state == JobState.STOPPED.value


@dataclass(frozen=True)
class SearchRuns:
    """A search's folder as read: its definition and its trials."""

    name: str
    spec: SearchSpec
    epochs: int  # each trial's full run
    trials: list[Trial]

    @property
    def ranked(self) -> list[Trial]:
        """Trials with a metric, best first; then the others, by number."""
        metric = self.spec.metric
        scored = sorted((t for t in self.trials if t.value is not None), key=lambda t: t.value or 0.0)
        if metric.direction == "max":
            scored.reverse()
        return scored + sorted((t for t in self.trials if t.value is None), key=lambda t: t.number)

    @property
    def best(self) -> Trial | None:
        ranked = [t for t in self.ranked if t.value is not None]
        return ranked[0] if ranked else None

    @property
    def epochs_run(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def epochs_full(self) -> int:
        """What running every trial to its end would take: each trial's full run of epochs."""
        return self.spec.trials * self.epochs


def _epochs_of(run: Run) -> int:
    if run.result is not None:
        return len(run.result.epochs)
    stop = run.status.early_stop if run.status is not None else None
    if stop is not None:
        return stop.epoch
    progress = run.store.read_progress() or {}
    epoch = progress.get("epoch", 0)
    return epoch if isinstance(epoch, int) else 0


def _value_of(run: Run, metric: str) -> float | None:
    if run.result is not None and run.result.epochs:
        return float(getattr(run.result.epochs[-1], metric))
    stop = run.status.early_stop if run.status is not None else None
    if stop is not None and stop.value is not None:
        return stop.value
    value = (run.store.read_progress() or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def read_search(store: SearchStore) -> SearchRuns | None:
    """The search of `store`, or None when its search.json is not gridrun's."""
    definition = store.read_definition() or {}
    try:
        spec = SearchSpec.model_validate(definition["search"])
        epochs = int(definition["epochs"])
    except (KeyError, TypeError, ValueError):
        return None
    trials = []
    for job in store.trials():
        run = read_run(job)
        info = run.spec_file.trial if run.spec_file is not None else None
        if info is None:
            continue
        trials.append(Trial(run, info.number, info.values, _value_of(run, spec.metric.name), _epochs_of(run)))
    return SearchRuns(store.name, spec, epochs, sorted(trials, key=lambda t: t.number))


def read_searches(suite: SuiteStore) -> list[SearchRuns]:
    return [s for store in suite.searches() if (s := read_search(store)) is not None]


def search_summary(store: SearchStore) -> dict[str, Any]:
    """The search as summary.json holds it: its trials' states, the best, and the epochs early stopping saved."""
    search = read_search(store)
    if search is None:
        return {"name": store.name}
    best = search.best
    return {
        "name": search.name,
        "trials": {t.name: t.run.state for t in search.trials},
        "metric": search.spec.metric.name,
        "best": {"trial": best.name, "value": best.value, "values": best.values} if best else None,
        "stopped_early": sum(t.stopped for t in search.trials),
        "epochs_run": search.epochs_run,
        "epochs_full": search.epochs_full,
    }


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metric(value: float | None, name: str) -> str:
    if value is None:
        return MISSING
    return pct(value) if "accuracy" in name else f"{value:.4g}"


def _axis(key: str, kind: str, values: list[Any]) -> tuple[Axis, Any]:
    """A parallel-coordinates axis for one varied field, and the function placing a value on it in [0, 1]."""
    label = key.rsplit(".", 1)[-1]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if kind in ("choice", "grid") or len(numbers) != len(values):
        levels = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        spot = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
        return (label, [(spot[v], _shown(v)) for v in levels]), lambda v: spot[v]
    log = kind == "loguniform" and min(numbers) > 0
    scale = math.log10 if log else float
    low, high = scale(min(numbers)), scale(max(numbers))
    span = (high - low) or 1.0

    def place(v: Any) -> float:
        return (scale(v) - low) / span

    ticks = [(place(v), _shown(v)) for v in (min(numbers), max(numbers))]
    return (label + (" (log)" if log else ""), ticks), place


def parallel_inputs(search: SearchRuns) -> tuple[list[Axis], list[Line]]:
    """Axes for every varied field (and the metric), and one line per trial with a metric."""
    scored = [t for t in search.trials if t.value is not None]
    axes: list[Axis] = []
    places = []
    for key, dim in search.spec.space.items():
        axis, place = _axis(key, dim.kind, [t.values[key] for t in scored])
        axes.append(axis)
        places.append((key, place))
    metric_axis, metric_place = _axis(search.spec.metric.name, "uniform", [t.value for t in scored])
    axes.append(metric_axis)
    lines = [
        ([place(t.values[key]) for key, place in places] + [metric_place(t.value)], float(t.value or 0), t.stopped)
        for t in scored
    ]
    return axes, lines


def search_section(search: SearchRuns, plotter: Plotter | None) -> Section:
    """The section of one search: best trial, ranking, plots, and what early stopping saved."""
    spec, metric = search.spec, search.spec.metric
    blocks: list[Table | Figure | str | list[Figure]] = []
    keys = list(spec.space)
    done = [t for t in search.trials if t.run.state in ("succeeded", "stopped")]
    blocks.append(
        f"{len(search.trials)} of {spec.trials} trial(s) started, {len(done)} finished; "
        f"{metric.name} {'maximised' if metric.direction == 'max' else 'minimised'}; "
        f"{spec.scheduler.describe(search.epochs)}; searcher {spec.searcher}."
    )
    best = search.best
    if best is not None:
        values = ", ".join(f"{k} = {_shown(best.values[k])}" for k in keys)
        test = best.run.result.final_test_accuracy if best.run.result is not None else None
        blocks.append(
            f"**Best trial: {best.name}**, {metric.name} {_metric(best.value, metric.name)} "
            f"(test accuracy {pct(test)}) with {values}."
        )
    stopped = [t for t in search.trials if t.stopped]
    saved = search.epochs_full - search.epochs_run
    share = saved / search.epochs_full if search.epochs_full else 0.0
    blocks.append(
        f"**Early stopping:** {len(stopped)} of {len(search.trials)} trial(s) stopped early; "
        f"{search.epochs_run} epoch(s) run against {search.epochs_full} for every trial to its end "
        f"({spec.trials} x {search.epochs}): {saved} epoch(s) saved ({share:.0%})."
    )
    rows = []
    for rank, t in enumerate(search.ranked, 1):
        test = t.run.result.final_test_accuracy if t.run.result is not None else None
        stop = t.run.status.early_stop if t.run.status is not None else None
        ended = f"rung {stop.rung}, epoch {stop.epoch}" if stop is not None else t.run.state
        rows.append(
            [
                Cell(str(rank), numeric=True),
                Cell(t.name, best=t is best),
                *(Cell(_shown(t.values.get(k, MISSING)), numeric=_number(t.values.get(k))) for k in keys),
                Cell(_metric(t.value, metric.name), best=t is best, numeric=True),
                Cell(pct(test), numeric=True),
                Cell(f"{t.epochs}/{search.epochs}", numeric=True),
                Cell(ended),
            ]
        )
    headers = ["#", "Trial", *keys, metric.name, "Test acc.", "Epochs", "Ended"]
    blocks.append(Table(headers, rows, caption=f"Trials by {metric.name} at their last epoch, best first."))
    if plotter is not None:
        axes, lines = parallel_inputs(search)
        if lines:
            blocks.append(plotter.parallel(search.name, axes, lines, metric.name))
        curves = [(t.name, t.run.result) for t in search.ranked if t.run.result is not None][:BEST_CURVES]
        if curves:
            caption = f"Search {search.name}: the {len(curves)} best trials' validation and test accuracy per epoch"
            blocks.append(plotter.overlay(curves, f"search-{search.name}-best.png", caption))
    return Section(f"Search {search.name}", blocks)
