"""The report of a sweep (more than SWEEP_RUNS runs): one interactive view of every run, and a page per run.

The view is a sortable, filterable table with accuracy against wall time, parallel coordinates of the values
the runs vary, and the curves of the best and of the selected runs, drawn by the page's own script from data
embedded in it: no server, no plot files. Each run's curves, confusion matrix and per-class accuracy move to
its own page under _runs/, written only when it changed.
"""

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.report.document import (
    MISSING,
    Cell,
    Chart,
    Document,
    Heatmap,
    Section,
    Sweep,
    Table,
    count,
    duration,
    pct,
    speed,
    write_text,
)
from runner.report.plots import slug
from runner.report.render import html_page
from runner.report.runs import Run
from runner.report.tables import Label, dataset_label, framework_name, weights_label

SWEEP_RUNS = 12  # up to this many runs, the report shows every run's plots on its one page
PAGES = "_runs"  # a job name starts with a letter or digit, so no job folder can be named so
MAX_VARIED = 12  # columns of varied fields, in the spec's order
# Shown in their own columns already, or not a value a sweep varies to learn from.
_DESCRIBED = {"name", "framework", "model.arch", "model.weights", "model.freeze_backbone", "dataset.name",
              "dataset.image_size", "description"}  # fmt: skip


def _flat(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}{key}.")
    else:
        yield prefix[:-1], json.dumps(value) if isinstance(value, list) else value


def flat_specs(runs: list[Run]) -> list[dict[str, Any]]:
    """Each run's spec as dotted fields ({} for a run without a spec)."""
    return [dict(_flat(r.spec.model_dump(mode="json"))) if r.spec is not None else {} for r in runs]


def varied_fields(runs: list[Run], flat: list[dict[str, Any]]) -> list[str]:
    """Dotted spec fields whose value is not the same in every run (absent counts as a value), in spec order;
    `flat` is flat_specs(runs)."""
    flat = [f for r, f in zip(runs, flat, strict=True) if r.spec is not None]
    keys = list(dict.fromkeys(k for f in flat for k in f if k not in _DESCRIBED))
    return [k for k in keys if len({json.dumps(f.get(k, "\0absent")) for f in flat}) > 1][:MAX_VARIED]


def _finite(value: Any) -> Any:
    """JSON has no NaN: a diverged run's number is shown as missing."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _column(key: str, label: str, kind: str = "text", fmt: str = "") -> dict[str, str]:
    return {"key": key, "label": label, "type": kind, "fmt": fmt}


def sweep_block(runs: list[Run], label: Label, page_of: dict[int, str]) -> Sweep:
    """The data of the interactive view, and the same table as plain rows for Markdown and the terminal."""
    values_of = flat_specs(runs)
    varied = varied_fields(runs, values_of)
    columns = [
        _column("job", "Job"), _column("state", "Status"), _column("framework", "Framework"),
        _column("model", "Model"), _column("weights", "Weights"), _column("dataset", "Dataset"),
        *(_column(key, key, "num" if _numeric(key, values_of) else "text", "g") for key in varied),
        _column("epochs", "Epochs", "num", "int"), _column("params", "Trainable params", "num", "int"),
        _column("wall", "Wall time", "num", "dur"), _column("ips", "Images/s", "num", "int"),
        _column("final", "Final test acc", "num", "pct"), _column("best", "Test acc at best epoch", "num", "pct"),
    ]  # fmt: skip
    rows, curves = [], []
    for run, values in zip(runs, values_of, strict=True):
        spec, result = run.spec, run.result
        described: list[Any] = [None] * 4
        if spec is not None:
            described = [framework_name(spec.framework), spec.model.arch, weights_label(spec, run.substitutions),
                         dataset_label(spec, run.substitutions)]  # fmt: skip
        numbers: list[Any] = [spec.train.epochs if spec is not None else None, None, None, None, None, None]
        if result is not None:
            numbers = [len(result.epochs), result.trainable_parameters, result.timing.total_seconds,
                       result.images_per_second, result.final_test_accuracy, result.best_test_accuracy]  # fmt: skip
        rows.append([_finite(v) for v in [label(run), run.state, *described, *(values.get(k) for k in varied),
                                          *numbers]])  # fmt: skip
        curves.append(
            [[e.epoch for e in result.epochs], [_round(e.val_accuracy) for e in result.epochs],
             [_round(e.test_accuracy) for e in result.epochs]]
            if result is not None and result.epochs else None
        )  # fmt: skip
    metric = len(columns) - 1
    scores = [row[metric] for row in rows if row[metric] is not None]
    best = [i for i, row in enumerate(rows) if scores and row[metric] == max(scores)]
    axes = [c["key"] for c in columns[2:6] if len({json.dumps(row[columns.index(c)]) for row in rows}) > 1]
    log = [key for key in varied if _spans_decades(key, values_of)]
    data = {
        "columns": columns, "rows": rows, "curves": curves, "best": best,
        "pages": [page_of.get(i) for i in range(len(runs))], "metric": "best", "x": "wall",
        "axes": [*axes, *varied, "best"], "log": log,
    }  # fmt: skip
    table = Table(
        [c["label"] for c in columns],
        [[_cell(c, v, i in best and c["key"] == "best") for c, v in zip(columns, row, strict=True)]
         for i, row in enumerate(rows)],
        f"Every run; each one's curves, confusion matrix and per-class accuracy on its own page in {PAGES}/. "
        "Accuracies are on the test split; the best epoch is the one with the best validation accuracy.",
    )  # fmt: skip
    return Sweep(data, table)


def _round(value: float) -> float | None:
    return round(value, 5) if math.isfinite(value) else None


def _numeric(key: str, values_of: list[dict[str, Any]]) -> bool:
    present = [v[key] for v in values_of if v.get(key) is not None]
    return bool(present) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in present)


def _spans_decades(key: str, values_of: list[dict[str, Any]]) -> bool:
    """Drawn on a log axis: a positive field whose values span more than a decade (learning rates)."""
    if not _numeric(key, values_of):
        return False
    present = [v[key] for v in values_of if v.get(key) is not None]
    return min(present) > 0 and max(present) / min(present) > 10


def _cell(column: dict[str, str], value: Any, best: bool) -> Cell:
    numeric = column["type"] == "num"
    if value is None:
        return Cell(MISSING, numeric=numeric)
    shown = {"pct": pct, "int": count, "dur": duration}.get(column["fmt"])
    if shown is not None:
        return Cell(shown(value), best, numeric)
    return Cell(f"{value:.4g}" if isinstance(value, float) else str(value), best, numeric)


# A page per run


def run_page(run: Run, title: str, base: Path) -> Document:
    """One run's page: what it was, what it measured, its curves, confusion matrix and per-class accuracy."""
    spec, result = run.spec, run.result
    facts = [("Status", run.state)]
    if run.reason:
        facts.append(("Reason", run.reason))
    if spec is not None:
        facts += [
            ("Framework", framework_name(spec.framework)), ("Model", spec.model.arch),
            ("Weights", weights_label(spec, run.substitutions)), ("Dataset", dataset_label(spec, run.substitutions)),
        ]  # fmt: skip
    if result is not None:
        t, env = result.timing, result.environment
        facts += [
            ("Epochs", f"{len(result.epochs)} of {result.spec.train.epochs}"),
            ("Test accuracy", f"{pct(result.best_test_accuracy)} at the best epoch ({result.best_epoch}), "
                              f"{pct(result.final_test_accuracy)} final"),
            ("Parameters", f"{count(result.trainable_parameters)} trainable of {count(result.total_parameters)}"),
            ("Wall time", f"{duration(t.total_seconds)}: data {duration(t.data_seconds)}, "
                          f"training {duration(t.train_seconds)}, evaluation {duration(t.eval_seconds)}"),
            ("Images/s", speed(result)),
            ("Device", f"{env.device} {env.device_name}".strip()),
        ]  # fmt: skip
        if env.limits.cpu_threads is not None:
            facts.append(("Limits", env.limits.describe()))
    log = run.log if run.store.local is None else Path(os.path.relpath(run.log, base)).as_posix()
    facts.append(("Log", log))
    sections = [Section("Run", [Table(["Field", "Value"], [[Cell(k), Cell(v)] for k, v in facts])])]
    if result is not None and result.epochs:
        epochs = [e.epoch for e in result.epochs]
        accuracy = Chart(
            "Accuracy per epoch",
            [
                (name, epochs, [getattr(e, f"{name}_accuracy") for e in result.epochs])
                for name in ("train", "val", "test")
            ],
            percent=True,
            marker=result.best_epoch,
        )
        loss = Chart("Training loss per epoch", [("train loss", epochs, [e.train_loss for e in result.epochs])])
        sections.append(Section("Curves", [[accuracy, loss]]))
    if result is not None and result.class_names and result.confusion_matrix:
        sections.append(
            Section(
                "Confusion matrix",
                [Heatmap(result.class_names, result.confusion_matrix, "Rows: true class; columns: predicted class; "
                         "colour: the share of the true class's test images.")],
            )
        )  # fmt: skip
        classes = [[Cell(c.name), Cell(pct(c.accuracy), numeric=True), Cell(count(c.support), numeric=True)]
                   for c in result.per_class_accuracy]  # fmt: skip
        sections.append(Section("Per-class accuracy", [Table(["Class", "Test accuracy", "Images"], classes)]))
    if spec is not None:
        rows = [[Cell(k), Cell(str(v))] for k, v in _flat(spec.model_dump(mode="json")) if k != "name"]
        sections.append(Section("Spec", [Table(["Field", "Value"], rows, "The spec as run.")]))
    return Document(title, [], sections)


def page_name(label: str) -> str:
    return f"{slug(label)}.html"


def write_run_pages(runs: list[Run], label: Label, folder: Path, title: str, home: str) -> list[Path]:
    """A page per run into `folder`, each linking to `home`; only pages whose text changed are written, and
    pages of runs no longer there are removed (the folder too, when none is left)."""
    if not runs and not folder.is_dir():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        path = folder / page_name(label(run))
        text = html_page(run_page(run, f"{title}: {label(run)}", folder), home=home)
        try:
            same = path.read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            write_text(path, text)
        written.append(path)
    keep = {p.name for p in written}
    for old in folder.glob("*.html"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    if not written and not any(folder.iterdir()):
        folder.rmdir()
    return written
