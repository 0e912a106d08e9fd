"""The report's tables and its generated conclusion, from the runs alone (no plotting, no rendering)."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.report.document import MISSING, Cell, Table, count, duration, pct, rate
from runner.report.runs import PROBLEM_STATES, Run
from schemas import JobSpec, RunResult, Substitution
from schemas.registry import FRAMEWORKS

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
                Cell(rate(result.images_per_second), i in quickest, True),
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
class Pair:
    """The same model, weights and data in both frameworks: the best run of each."""

    model: str
    weights: str
    dataset: str
    torch: Run
    tensorflow: Run


def framework_pairs(runs: list[Run]) -> list[Pair]:
    """Models that ran in both frameworks with the same weights and data (the best run of each side)."""
    groups: dict[tuple[str, str, str], dict[str, Run]] = {}
    for run, result in _finished(runs):
        spec = result.spec
        # Only the same network is compared: a narrower classifier is another model.
        model = spec.model.arch + (f" (dense {spec.model.classifier_width})" if spec.model.classifier_width else "")
        key = (model, weights_label(spec, result.substitutions), dataset_label(spec, result.substitutions))
        side = groups.setdefault(key, {})
        held = side.get(spec.framework)
        if held is None or result.best_test_accuracy > held.result.best_test_accuracy:  # type: ignore[union-attr]
            side[spec.framework] = run
    return [
        Pair(*key, torch=side["torch"], tensorflow=side["tensorflow"])
        for key, side in groups.items()
        if {"torch", "tensorflow"} <= side.keys()
    ]


def framework_table(pairs: list[Pair], label: Label) -> Table:
    headers = [
        "Model", "Weights", "Dataset", "PyTorch run", "TensorFlow run", "PyTorch acc", "TensorFlow acc",
        "PyTorch time", "TensorFlow time", "PyTorch img/s", "TensorFlow img/s",
    ]  # fmt: skip
    rows = []
    for p in pairs:
        t, f = p.torch.result, p.tensorflow.result
        assert t is not None and f is not None
        acc = _best([t.best_test_accuracy, f.best_test_accuracy])
        time = _best([t.timing.total_seconds, f.timing.total_seconds], highest=False)
        speed = _best([t.images_per_second, f.images_per_second])
        rows.append([
            Cell(p.model), Cell(p.weights), Cell(p.dataset), Cell(label(p.torch)), Cell(label(p.tensorflow)),
            Cell(pct(t.best_test_accuracy), 0 in acc, True), Cell(pct(f.best_test_accuracy), 1 in acc, True),
            Cell(duration(t.timing.total_seconds), 0 in time, True),
            Cell(duration(f.timing.total_seconds), 1 in time, True),
            Cell(rate(t.images_per_second), 0 in speed, True), Cell(rate(f.images_per_second), 1 in speed, True),
        ])  # fmt: skip
    return Table(headers, rows, "Accuracy: test accuracy at the best epoch. Bold: the better framework.")


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
        log = run.log if base is None else Path(os.path.relpath(run.log, base))
        rows.append([Cell(label(run)), Cell(run.state), Cell(run.reason or MISSING), Cell(str(log))])
    return Table(["Job", "Status", "Reason", "Log"], rows)


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
    for pair in framework_pairs(runs)[:3]:
        t, f = pair.torch.result, pair.tensorflow.result
        assert t is not None and f is not None
        lines.append(
            f"Both frameworks, {pair.model} ({pair.weights}, {pair.dataset}): PyTorch "
            f"{pct(t.best_test_accuracy)} in {duration(t.timing.total_seconds)} ({rate(t.images_per_second)} "
            f"images/s), TensorFlow {pct(f.best_test_accuracy)} in {duration(f.timing.total_seconds)} "
            f"({rate(f.images_per_second)} images/s)."
        )
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
