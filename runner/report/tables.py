"""The report's tables and its generated conclusion, from the runs alone (no plotting, no rendering)."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.report.document import MISSING, Cell, Table, count, duration, pct, rate, speed
from runner.report.runs import PROBLEM_STATES, Run
from schemas import JobSpec, RunResult, Substitution
from schemas.registry import FRAMEWORKS, ZOOS, model_ref, same_name

Label = Callable[[Run], str]


def framework_name(framework: str) -> str:
    """How the report names a framework: its declared display name (the name itself if undeclared)."""
    declared = FRAMEWORKS.get(framework)
    return declared.display if declared is not None else framework


def weights_label(spec: JobSpec, substitutions: list[Substitution]) -> str:
    """scratch, pretrained or frozen backbone; a weights file or a substitute is named."""
    weights = spec.model.weights
    text = "scratch" if weights == "none" else "frozen backbone" if spec.model.freeze_backbone else "pretrained"
    if weights not in ("none", "imagenet"):
        text += f" ({Path(weights).name})"
    for sub in substitutions:
        if sub.kind == "weights":
            text += f" (substitute for {sub.wanted})"
    return text


def dataset_label(spec: JobSpec, substitutions: list[Substitution]) -> str:
    text = f"{spec.dataset.name} {spec.dataset.image_size}px"
    for sub in substitutions:
        if sub.kind == "dataset":
            text += f" (substitute for {sub.wanted})"
    return text


def accuracy_per_hour(result: RunResult) -> float:
    """Accuracy points (test accuracy at the best epoch, in %) per hour of wall time."""
    return result.best_test_accuracy * 100 / max(result.timing.total_seconds / 3600, 1e-9)


def _finished(runs: list[Run]) -> list[tuple[Run, RunResult]]:
    return [(r, r.result) for r in runs if r.result is not None]


def _best(values: list[float | None], highest: bool = True) -> set[int]:
    """Indices holding the best value (all of them on a tie); none when fewer than two values."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return set()
    target = max(v for _, v in present) if highest else min(v for _, v in present)
    return {i for i, v in present if v == target}


def summary_table(runs: list[Run], label: Label) -> Table:
    """One row per run: what it was, what it cost and how accurate it became."""
    headers = [
        "Job", "Framework", "Model", "Weights", "Dataset", "Epochs", "Trainable params", "Wall time",
        "Images/s", "Final test acc", "Best epoch", "Test acc at best epoch", "Status",
    ]  # fmt: skip
    res = [r.result for r in runs]
    best_final = _best([x.final_test_accuracy if x else None for x in res])
    best_at_best = _best([x.best_test_accuracy if x else None for x in res])
    fastest = _best([x.timing.total_seconds if x else None for x in res], highest=False)
    quickest = _best([x.images_per_second if x else None for x in res])
    rows = []
    for i, run in enumerate(runs):
        spec, result = run.spec, run.result
        described = [MISSING] * 4
        if spec is not None:
            described = [
                framework_name(spec.framework),
                spec.model.arch,
                weights_label(spec, run.substitutions),
                dataset_label(spec, run.substitutions),
            ]
        if result is not None:
            done, planned = len(result.epochs), result.spec.train.epochs
            numbers = [
                Cell(str(done) if done == planned else f"{done} of {planned}", numeric=True),
                Cell(count(result.trainable_parameters), numeric=True),
                Cell(duration(result.timing.total_seconds), i in fastest, True),
                Cell(speed(result), i in quickest, True),
                Cell(pct(result.final_test_accuracy), i in best_final, True),
                Cell(str(result.best_epoch), numeric=True),
                Cell(pct(result.best_test_accuracy), i in best_at_best, True),
            ]
        else:
            epochs = str(spec.train.epochs) if spec is not None else MISSING
            numbers = [Cell(epochs, numeric=True)] + [Cell(MISSING, numeric=True)] * 6
        rows.append([Cell(label(run)), *map(Cell, described), *numbers, Cell(run.state)])
    return Table(
        headers,
        rows,
        "Accuracies are on the test split; the best epoch is the one with the best validation accuracy. "
        "Bold: the best value of a column.",
    )


@dataclass(frozen=True)
class Comparison:
    """The same model, weights and data in two or more frameworks: the best run of each."""

    model: str
    weights: str
    dataset: str
    runs: dict[str, Run]  # framework -> its best run, in the registry's order

    def results(self, frameworks: list[str]) -> list[RunResult | None]:
        """The best run's result of each of `frameworks`; None where this model did not run in one."""
        return [self.runs[f].result if f in self.runs else None for f in frameworks]


def _framework_order(framework: str) -> tuple[int, str]:
    """Declared frameworks in the registry's order, then any other (from older results) by name."""
    order = list(FRAMEWORKS)
    return (order.index(framework), "") if framework in order else (len(order), framework)


def _best_of(
    runs: list[Run], model: Callable[[JobSpec], str | None], side: Callable[[JobSpec], str]
) -> dict[tuple[str, str, str], dict[str, Run]]:
    """Finished runs grouped by (model(spec), weights, dataset), the best of each side(spec) in a group;
    runs whose model(spec) is None are left out."""
    groups: dict[tuple[str, str, str], dict[str, Run]] = {}
    for run, result in _finished(runs):
        spec = result.spec
        name = model(spec)
        if name is None:
            continue
        # Only the same network is compared: a narrower classifier is another model.
        name += f" (dense {spec.model.classifier_width})" if spec.model.classifier_width else ""
        key = (name, weights_label(spec, result.substitutions), dataset_label(spec, result.substitutions))
        held = groups.setdefault(key, {}).get(side(spec))
        if held is None or result.best_test_accuracy > held.result.best_test_accuracy:  # type: ignore[union-attr]
            groups[key][side(spec)] = run
    return groups


def framework_pairs(runs: list[Run]) -> list[Comparison]:
    """Twins (the same network in every framework) that ran in two or more frameworks with the same weights
    and data (the best run of each); a pair for the study's two frameworks, hence the name. A zoo model is
    its library's own network, in one framework: runs of zoo models that share a name are same_names'."""
    groups = _best_of(runs, lambda spec: spec.model.arch if spec.model.twin else None, lambda spec: spec.framework)
    return [
        Comparison(*key, runs={f: side[f] for f in sorted(side, key=_framework_order)})
        for key, side in groups.items()
        if len(side) >= 2
    ]


@dataclass(frozen=True)
class SameName:
    """Zoo models of two or more libraries that share a name, case and underscores aside (torchvision.resnet50,
    keras.ResNet50): different networks, shown side by side with their parameter counts, never as a
    comparison of frameworks."""

    name: str
    weights: str
    dataset: str
    runs: dict[str, Run]  # library prefix -> its best run, in the registry's order

    def archs(self) -> list[str]:
        return [run.result.spec.model.arch for run in self.runs.values() if run.result is not None]


def _zoo_name(spec: JobSpec) -> str | None:
    return same_name(spec.model.arch) if model_ref(spec.model.arch).zoo is not None else None


def same_names(runs: list[Run]) -> list[SameName]:
    """Zoo models of two or more libraries that share a name, with the same weights and data (the best run of
    each library)."""
    order = list(ZOOS)
    groups = _best_of(runs, _zoo_name, lambda spec: model_ref(spec.model.arch).zoo.prefix)  # type: ignore[union-attr]
    return [
        SameName(*key, runs={z: side[z] for z in sorted(side, key=order.index)})
        for key, side in groups.items()
        if len(side) >= 2
    ]


def same_name_libraries(groups: list[SameName]) -> list[str]:
    """Every library some group holds, in the registry's order."""
    return [z for z in ZOOS if any(z in g.runs for g in groups)]


def _parameters(result: RunResult) -> str:
    total, trainable = result.total_parameters, result.trainable_parameters
    return count(total) if trainable == total else f"{count(total)} ({count(trainable)} trainable)"


def same_name_table(groups: list[SameName], label: Label) -> Table:
    """A row per name, a group of columns per library: its run, parameters, accuracy and wall time."""
    libraries = same_name_libraries(groups)
    names = [ZOOS[z].display for z in libraries]
    headers = ["Name", "Networks", "Weights", "Dataset"]
    for what in ("run", "parameters", "acc", "time"):
        headers += [f"{name} {what}" for name in names]
    rows = []
    for g in groups:
        results = [g.runs[z].result if z in g.runs else None for z in libraries]
        row = [Cell(g.name), Cell(f"different: {', '.join(g.archs())}"), Cell(g.weights), Cell(g.dataset)]
        row += [Cell(label(g.runs[z]) if z in g.runs else MISSING) for z in libraries]
        row += [Cell(_parameters(r) if r else MISSING, numeric=True) for r in results]
        row += [Cell(pct(r.best_test_accuracy) if r else MISSING, numeric=True) for r in results]
        row += [Cell(duration(r.timing.total_seconds) if r else MISSING, numeric=True) for r in results]
        rows.append(row)
    return Table(
        headers,
        rows,
        "Each library builds its own network under a name (its layers, parameter counts and defaults), so these "
        "runs are different networks side by side, not a comparison of frameworks: only gridrun's twins "
        "compare frameworks. Accuracy: test accuracy at the best epoch.",
    )


def compared_frameworks(comparisons: list[Comparison]) -> list[str]:
    """Every framework some comparison holds, in the registry's order."""
    return sorted({f for c in comparisons for f in c.runs}, key=_framework_order)


def framework_section(comparisons: list[Comparison]) -> tuple[str, str]:
    """The title and lead sentence of the report's section comparing frameworks."""
    names = [framework_name(f) for f in compared_frameworks(comparisons)]
    title = " and ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} and {names[-1]}"
    if len(names) == 2:
        return title, "The same model with the same weights and data in both frameworks (the best run of each side)."
    return title, "The same model with the same weights and data in two or more frameworks (the best run of each)."


def framework_table(comparisons: list[Comparison], label: Label) -> Table:
    """A row per model, a group of columns per framework: its run, accuracy, wall time and images/s."""
    frameworks = compared_frameworks(comparisons)
    names = [framework_name(f) for f in frameworks]
    headers = ["Model", "Weights", "Dataset"]
    for what in ("run", "acc", "time", "img/s"):
        headers += [f"{name} {what}" for name in names]
    rows = []
    for c in comparisons:
        results = c.results(frameworks)
        row = [Cell(c.model), Cell(c.weights), Cell(c.dataset)]
        row += [Cell(label(c.runs[f]) if f in c.runs else MISSING) for f in frameworks]
        for value, text, highest in (
            (lambda r: r.best_test_accuracy, pct, True),
            (lambda r: r.timing.total_seconds, duration, False),
            (lambda r: r.images_per_second, rate, True),
        ):
            values = [value(r) if r is not None else None for r in results]
            best = _best(values, highest)
            pairs = zip(values, results, strict=True)
            shown = [speed(r) if text is rate and r is not None else text(v) for v, r in pairs]
            row += [Cell(shown[i], i in best, True) if v is not None else Cell(MISSING, numeric=True)
                    for i, v in enumerate(values)]  # fmt: skip
        rows.append(row)
    better = "the better framework" if len(frameworks) == 2 else "the best framework for each measure"
    notes = [note for c in comparisons if (note := unequal_limits(c.model, c.results(frameworks), names))]
    return Table(headers, rows, " ".join([f"Accuracy: test accuracy at the best epoch. Bold: {better}.", *notes]))


def unequal_limits(model: str, results: list[RunResult | None], names: list[str]) -> str:
    """A note when the compared runs did not have the same threads, CPU quota or memory: their speed is unfair."""
    ran = [(name, r.environment.limits) for name, r in zip(names, results, strict=True) if r is not None]
    if len(ran) < 2:
        return ""
    first = ran[0][1]
    fields = sorted({f for _, other in ran[1:] for f in first.differences(other)})
    said = [
        f"{field.replace('_', ' ')}: " + ", ".join(f"{name} {getattr(lim, field) or 'none'}" for name, lim in ran)
        for field in fields
    ]
    replicas = [(name, r.environment.replicas) for name, r in zip(names, results, strict=True) if r is not None]
    if len({n for _, n in replicas}) > 1:  # a run on more replicas is faster for that alone
        said.append("replicas: " + ", ".join(f"{name} {n}" for name, n in replicas))
    if not said:
        return ""
    return f"{model}: not the same limits, so its speeds are not comparable ({'; '.join(said)})."


def tradeoff_table(runs: list[Run], label: Label) -> Table:
    """Runs by accuracy per hour of wall time, most efficient first."""
    finished = sorted(_finished(runs), key=lambda rr: accuracy_per_hour(rr[1]), reverse=True)
    top = max((r.best_test_accuracy for _, r in finished), default=0.0)
    rows = [
        [
            Cell(label(run)),
            Cell(pct(r.best_test_accuracy), r.best_test_accuracy == top and len(finished) > 1, True),
            Cell(duration(r.timing.total_seconds), numeric=True),
            Cell(f"{accuracy_per_hour(r):,.1f}", i == 0 and len(finished) > 1, True),
            Cell(f"{(top - r.best_test_accuracy) * 100:.2f}", numeric=True),
        ]
        for i, (run, r) in enumerate(finished)
    ]
    return Table(
        ["Job", "Test acc at best epoch", "Wall time", "Accuracy points per hour", "Points behind the best run"],
        rows,
        "Accuracy points per hour: test accuracy at the best epoch, in percent, divided by the wall time in hours.",
    )


def per_class_tables(runs: list[Run], label: Label) -> list[Table]:
    """Rows: classes by name; columns: runs; the best run of each class marked.

    One table per set of classes: runs on different datasets share no rows.
    """
    groups: dict[tuple[str, ...], list[tuple[Run, RunResult]]] = {}
    for run, result in _finished(runs):
        groups.setdefault(tuple(c.name for c in result.per_class_accuracy), []).append((run, result))
    tables = []
    for classes, members in groups.items():
        by_run = [[c.accuracy for c in r.per_class_accuracy] for _, r in members]
        rows = []
        for i, name in enumerate(classes):
            values: list[float | None] = [acc[i] for acc in by_run]
            best = _best(values)
            rows.append([Cell(name), *(Cell(pct(v), j in best, True) for j, v in enumerate(values))])
        datasets = sorted({dataset_label(r.spec, r.substitutions) for _, r in members})
        caption = "Test accuracy per class of each run's final model. Bold: the best run of each class."
        if len(groups) > 1:
            caption = f"{', '.join(datasets)}. {caption}"
        tables.append(Table(["Class", *(label(run) for run, _ in members)], rows, caption))
    return tables


def problems_table(runs: list[Run], label: Label, base: Path | None) -> Table:
    """Failed, blocked, cancelled and incomplete runs, each with its reason and log."""
    rows = []
    for run in runs:
        if run.state not in PROBLEM_STATES:
            continue
        # A log on object storage is named by its URL; a local one relative to the report.
        log = run.log if base is None or run.store.local is None else Path(os.path.relpath(run.log, base))
        rows.append([Cell(label(run)), Cell(run.state), Cell(run.reason or MISSING), Cell(str(log))])
    return Table(["Job", "Status", "Reason", "Log"], rows)


def unreadable_table(runs: list[Run], label: Label) -> Table:
    """Every file of a job folder that is there but unusable: the report leaves out what it held."""
    rows = [[Cell(label(run)), Cell(problem)] for run in runs for problem in run.problems]
    fix = "Fix: remove the file, or re-run the job: its next run writes it anew."
    return Table(["Job", "Problem"], rows, caption=fix)


def substitutions_table(runs: list[Run], label: Label) -> Table:
    rows = [
        [Cell(label(run)), Cell(s.kind), Cell(s.wanted), Cell(s.used), Cell(s.reason)]
        for run in runs
        for s in run.substitutions
    ]
    return Table(["Job", "Kind", "Wanted", "Used", "Reason"], rows)


def _of(some: list[Run], runs: list[Run], one: str = "has", many: str = "have") -> str:
    """'1 of 3 runs has' / '2 of 3 runs have'."""
    return f"{len(some)} of {len(runs)} runs {one if len(some) == 1 else many}"


def conclusion(runs: list[Run], label: Label) -> list[str]:
    """A few generated sentences: best run, fastest run, accuracy per hour, and what is missing."""
    finished = _finished(runs)
    lines = []
    if not finished:
        lines.append("No run has finished: no job folder holds a valid result.json yet.")
    else:
        run, best = max(finished, key=lambda rr: (rr[1].best_test_accuracy, -rr[1].timing.total_seconds))
        spec = best.spec
        lines.append(
            f"Best run: **{label(run)}** ({framework_name(spec.framework)} {spec.model.arch}, "
            f"{weights_label(spec, best.substitutions)}, {dataset_label(spec, best.substitutions)}) with "
            f"{pct(best.best_test_accuracy)} test accuracy at its best epoch, {best.best_epoch} of "
            f"{len(best.epochs)} (final {pct(best.final_test_accuracy)})."
        )
        fast_run, fast = min(finished, key=lambda rr: rr[1].timing.total_seconds)
        line = (
            f"Fastest run: **{label(fast_run)}**, {duration(fast.timing.total_seconds)} wall time at "
            f"{rate(fast.images_per_second)} images/s"
        )
        speed_run, speed = max(finished, key=lambda rr: rr[1].images_per_second)
        if speed_run is not fast_run:
            line += f"; highest throughput: **{label(speed_run)}** at {rate(speed.images_per_second)} images/s"
        lines.append(line + ".")
        eff_run, eff = max(finished, key=lambda rr: accuracy_per_hour(rr[1]))
        line = (
            f"Most accuracy per hour: **{label(eff_run)}**, {pct(eff.best_test_accuracy)} in "
            f"{duration(eff.timing.total_seconds)} ({accuracy_per_hour(eff):,.1f} points per hour). "
        )
        if eff_run is run:
            line += "The most accurate run is also the most efficient."
        else:
            ratio = best.timing.total_seconds / max(eff.timing.total_seconds, 1e-9)
            gain = (best.best_test_accuracy - eff.best_test_accuracy) * 100
            line += f"The best run gains {gain:+.2f} points over it for {ratio:.1f}× its wall time."
        lines.append(line)
    for c in framework_pairs(runs)[:3]:
        each = []
        for framework, run in c.runs.items():
            r = run.result
            assert r is not None
            each.append(
                f"{framework_name(framework)} {pct(r.best_test_accuracy)} in {duration(r.timing.total_seconds)} "
                f"({rate(r.images_per_second)} images/s)"
            )
        which = "Both frameworks" if len(each) == 2 else f"{len(each)} frameworks"
        lines.append(f"{which}, {c.model} ({c.weights}, {c.dataset}): {', '.join(each)}.")
    for g in same_names(runs)[:3]:
        each = []
        for run in g.runs.values():
            r = run.result
            assert r is not None
            each.append(f"{r.spec.model.arch} {pct(r.best_test_accuracy)} with {count(r.total_parameters)} parameters")
        lines.append(f"Same name, different networks ({g.weights}, {g.dataset}): {', '.join(each)}.")
    problems = [r for r in runs if r.state in PROBLEM_STATES]
    if problems:
        states = sorted({r.state for r in problems})
        lines.append(
            f"{_of(problems, runs)} no usable result ({', '.join(states)}): see «Failed, blocked and substituted runs»."
        )
    pending = [r for r in runs if r.state in ("queued", "running", "unknown")]
    if pending:
        lines.append(f"{_of(pending, runs)} not finished yet (queued, running or not started).")
    substituted = [r for r in runs if r.substitutions]
    if substituted:
        names = ", ".join(label(r) for r in substituted[:5]) + (", ..." if len(substituted) > 5 else "")
        lines.append(
            f"{_of(substituted, runs, 'used', 'used')} a declared substitute ({names}): "
            "their numbers are not those of the setup asked for."
        )
    return lines
