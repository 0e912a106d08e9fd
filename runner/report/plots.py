"""The report's plots, drawn with matplotlib's Agg renderer and written as PNG files.

A plot is drawn again only when its inputs change: the hash of each file's inputs is kept in
plots/.cache.json, so writing the report again after each finished job costs little. Many plots
to draw (a suite of hundreds of runs) are drawn by a pool of processes, one per free core.
Figures are made without pyplot: no global state, no GUI backend.
"""

import hashlib
import io
import json
import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from runner.report.document import Figure
from runner.report.tables import Comparison, compared_frameworks, framework_name
from schemas import RunResult
from schemas.registry import FRAMEWORKS

# Bump when the look of the plots changes, so cached files are drawn again.
STYLE_VERSION = 3
DPI = 80
CACHE_FILE = ".cache.json"
# Below this many plots to draw, starting worker processes (about a second each) does not pay;
# each worker takes at least half of that many.
POOL_MIN_PLOTS = 40
POOL_MAX_WORKERS = 8
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
# A parallel-coordinates axis: its label and its ticks, (position in [0, 1], text); a trial's line: its position on
# each axis, its metric's value, and whether it was stopped early.
Axis = tuple[str, list[tuple[float, str]]]
Line = tuple[list[float], float, bool]


def slug(label: str) -> str:
    """A run label as part of a file name: suite/job becomes suite--job."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("/", "--"))


class Plotter:
    """Plots of one folder: each method returns a Figure whose PNG is ready once `finish()` returns."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._cache: dict[str, str] = json.loads((self.folder / CACHE_FILE).read_text())
        except (OSError, ValueError):
            self._cache = {}
        self._used: set[str] = set()
        self._pending: list[tuple[Figure, str, Callable[..., Any], tuple[Any, ...]]] = []
        self.drawn = 0

    def _plot(self, name: str, caption: str, draw: Callable[..., Any], *inputs: Any) -> Figure:
        key = hashlib.sha256(json.dumps([STYLE_VERSION, draw.__name__, inputs], sort_keys=True).encode()).hexdigest()
        path = self.folder / name
        self._used.add(name)
        if self._cache.get(name) == key and path.is_file():
            return Figure(path, path.read_bytes(), caption)
        figure = Figure(path, b"", caption)
        self._pending.append((figure, key, draw, inputs))
        return figure

    def finish(self) -> None:
        """Draw what changed, remove plots this report no longer has, save the cache."""
        jobs = [(draw, inputs) for _, _, draw, inputs in self._pending]
        workers = min(len(os.sched_getaffinity(0)), POOL_MAX_WORKERS, len(jobs) // (POOL_MIN_PLOTS // 2))
        if len(jobs) >= POOL_MIN_PLOTS and workers > 1:
            # spawn, not fork: the caller may be a threaded Ray driver, where fork is unsafe.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                pngs = list(pool.map(_render, jobs, chunksize=max(1, len(jobs) // (workers * 4))))
        else:
            pngs = [_render(job) for job in jobs]
        for (figure, key, _, _), png in zip(self._pending, pngs, strict=True):
            _write_atomic(figure.path, png)
            figure.png = png
            self._cache[figure.path.name] = key
        self.drawn += len(pngs)
        self._pending.clear()
        for name in set(self._cache) - self._used:
            (self.folder / name).unlink(missing_ok=True)
            del self._cache[name]
        _write_atomic(self.folder / CACHE_FILE, json.dumps(self._cache, indent=1, sort_keys=True).encode())

    def curves(self, label: str, result: RunResult) -> Figure:
        """Train, validation and test accuracy per epoch of one run, best epoch marked."""
        epochs = [e.epoch for e in result.epochs]
        series = {
            "train": [e.train_accuracy for e in result.epochs],
            "val": [e.val_accuracy for e in result.epochs],
            "test": [e.test_accuracy for e in result.epochs],
        }
        name = f"curves-{slug(label)}.png"
        return self._plot(name, f"{label}: accuracy per epoch", draw_curves, label, epochs, series, result.best_epoch)

    def overlay(
        self,
        runs: list[tuple[str, RunResult]],
        name: str = "overlay.png",
        caption: str = "All runs: validation and test accuracy per epoch",
    ) -> Figure:
        """Validation and test accuracy per epoch of every run, on one pair of axes."""
        data = [
            (run, [e.epoch for e in r.epochs], [e.val_accuracy for e in r.epochs], [e.test_accuracy for e in r.epochs])
            for run, r in runs
        ]
        return self._plot(name, caption, draw_overlay, data)

    def parallel(self, search: str, axes: list[Axis], lines: list[Line], metric: str) -> Figure:
        """A search's parallel coordinates: one line per trial across its varied values, coloured by its metric."""
        caption = f"Search {search}: each trial's values and its {metric} (dashed: stopped early)"
        return self._plot(f"search-{slug(search)}-parallel.png", caption, draw_parallel, axes, lines, metric)

    def confusion(self, label: str, result: RunResult) -> Figure:
        """Confusion matrix heatmap: colour is the share of each true class, text the count."""
        caption = f"{label}: confusion matrix on the test split"
        name = f"confusion-{slug(label)}.png"
        return self._plot(name, caption, draw_confusion, label, result.confusion_matrix, result.class_names)

    def tradeoff(self, runs: list[tuple[str, RunResult]]) -> Figure:
        """Wall time against test accuracy at the best epoch."""
        points = [(label, r.timing.total_seconds / 60, r.best_test_accuracy * 100) for label, r in runs]
        return self._plot("tradeoff.png", "Test accuracy at the best epoch against wall time", draw_tradeoff, points)

    def frameworks(self, comparisons: list[Comparison]) -> Figure:
        """The same model in each framework: accuracy and wall time side by side, a bar per framework."""
        frameworks = compared_frameworks(comparisons)
        series = [(framework_name(f), FRAMEWORKS[f].colour if f in FRAMEWORKS else "") for f in frameworks]
        rows = []
        for c in comparisons:
            results = c.results(frameworks)
            rows.append([
                f"{c.model}\n{c.weights}\n{c.dataset}",
                [r.best_test_accuracy * 100 if r else None for r in results],
                [r.timing.total_seconds / 60 if r else None for r in results],
            ])  # fmt: skip
        caption = "The same model in both frameworks" if len(frameworks) == 2 else "The same model in each framework"
        return self._plot("frameworks.png", caption, draw_frameworks, series, rows)


def _render(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> bytes:
    draw, inputs = job
    buf = io.BytesIO()
    draw(*inputs).savefig(buf, format="png")
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_figure(**kwargs: Any) -> Any:
    # A Figure made without pyplot saves PNG through the Agg renderer whatever backend the process chose.
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(dpi=DPI, **kwargs)


def _epoch_axis(ax: Any, epochs: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


# Drawing functions: module level and plain inputs, so a worker process can run them.


def draw_parallel(axes: list[Axis], lines: list[Line], metric: str) -> Any:
    import matplotlib

    fig = _new_figure(figsize=(max(6, 2.2 * len(axes)), 4.2))
    ax = fig.add_subplot()
    values = [m for _, m, _ in lines]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    cmap, span = matplotlib.colormaps["viridis"], (high - low) or 1.0
    xs = list(range(len(axes)))
    for ys, value, stopped in sorted(lines, key=lambda line: line[1]):  # the best drawn last, on top
        ax.plot(xs, ys, color=cmap((value - low) / span), lw=1.6, ls="--" if stopped else "-", alpha=0.85)
    for x, (_, ticks) in enumerate(axes):
        ax.axvline(x, color="0.3", lw=0.8)
        for pos, text in ticks:
            ax.annotate(text, (x, pos), fontsize=7, xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xticks(xs, [label for label, _ in axes], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.1, len(axes) - 0.6)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(low, high), cmap=cmap)
    fig.colorbar(mappable, ax=ax, label=metric, fraction=0.04, pad=0.02)
    fig.subplots_adjust(left=0.04, right=0.9, top=0.95, bottom=0.1)
    return fig


def draw_curves(label: str, epochs: list[int], series: dict[str, list[float]], best_epoch: int) -> Any:
    fig = _new_figure(figsize=(5.2, 3.3))
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(epochs, [v * 100 for v in values], marker="o", ms=3, color=COLORS[name], label=name)
    ax.axvline(best_epoch, ls=":", color="0.4", label=f"best epoch ({best_epoch})")
    _epoch_axis(ax, epochs)
    ax.set_title(label, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)
    return fig


def draw_overlay(data: list[tuple[str, list[int], list[float], list[float]]]) -> Any:
    import matplotlib

    legend = len(data) <= 20  # beyond that a legend hides the plot; the per-run plots name each line
    rows = -(-len(data) // 2) if legend else 0
    height = 3.8 + 0.2 * rows
    fig = _new_figure(figsize=(10, height))
    axes = fig.subplots(1, 2, sharey=True)
    cmap = matplotlib.colormaps["tab20" if len(data) > 10 else "tab10"]
    for i, (label, epochs, val, test) in enumerate(data):
        color = cmap(i % cmap.N)
        axes[0].plot(epochs, [v * 100 for v in val], color=color, lw=1.3, label=label)
        axes[1].plot(epochs, [v * 100 for v in test], color=color, lw=1.3)
    all_epochs = sorted({e for _, epochs, _, _ in data for e in epochs})
    for ax, title in zip(axes, ("Validation accuracy", "Test accuracy"), strict=True):
        _epoch_axis(ax, all_epochs)
        ax.set_title(title, fontsize=10)
    axes[1].set_ylabel("")
    bottom = 0.14
    if legend:
        bottom = (0.6 + 0.2 * rows) / height
        fig.legend(loc="lower center", ncols=2, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=bottom, wspace=0.06)
    return fig


def _centred_text_paths(texts: list[str], size: float) -> list[Any]:
    """Glyph outlines of each text, centred on the origin, in points; cached, as counts repeat."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    out = []
    for text in texts:
        key = (text, size)
        if key not in _TEXT_PATHS:
            path = TextPath((0, 0), text, prop=FontProperties(size=size))
            box = path.get_extents()
            _TEXT_PATHS[key] = path.transformed(Affine2D().translate(-(box.x0 + box.x1) / 2, -(box.y0 + box.y1) / 2))
        out.append(_TEXT_PATHS[key])
    return out


_TEXT_PATHS: dict[tuple[str, float], Any] = {}


def draw_confusion(label: str, matrix: list[list[int]], names: list[str]) -> Any:
    import numpy as np
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Affine2D

    cm = np.asarray(matrix, dtype=np.int64)
    n = len(names)
    side = min(3.2 + 0.35 * n, 12)
    fig = _new_figure(figsize=(side, side))
    ax = fig.add_subplot()
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:  # counts stay readable up to about 20 classes
        # One collection of glyph outlines draws in a fraction of the time of n * n text artists.
        counts = PathCollection(
            _centred_text_paths([str(v) for v in cm.flat], 7),
            offsets=[(j, i) for i in range(n) for j in range(n)],
            offset_transform=ax.transData,
            facecolors=["white" if v > 0.55 else "black" for v in share.flat],
            edgecolors="none",
        )
        counts.set_transform(Affine2D().scale(fig.dpi / 72))  # points to pixels
        ax.add_collection(counts, autolim=False)
    if n <= 50:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{label}: confusion matrix (test)", fontsize=10)
    fig.subplots_adjust(left=0.2, right=0.97, top=0.93, bottom=0.18)
    return fig


def draw_tradeoff(points: list[tuple[str, float, float]]) -> Any:
    """Scatter of minutes against accuracy; the runs no quicker run beats are joined by a line."""
    fig = _new_figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    ax.scatter([p[1] for p in points], [p[2] for p in points], s=18, color="#1f77b4", zorder=3)
    front, best = [], -1.0
    for _, minutes, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.append((minutes, acc))
            best = acc
    ax.plot([f[0] for f in front], [f[1] for f in front], color="#d62728", lw=1, label="best for its time")
    if len(points) <= 20:
        for label, minutes, acc in points:
            ax.annotate(label, (minutes, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    times = [p[1] for p in points]
    if min(times) > 0 and max(times) / min(times) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("test accuracy at best epoch (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.12)
    return fig


def draw_frameworks(series: list[tuple[str, str]], rows: list[list[Any]]) -> Any:
    """Grouped bars: a group per model, a bar per framework (name, colour) where the model ran in it."""
    fig = _new_figure(figsize=(max(6, 0.8 * len(series) * len(rows) + 3), 4))
    axes = fig.subplots(1, 2)
    x = list(range(len(rows)))
    width = 0.76 / len(series)
    for side, (name, colour) in enumerate(series):
        offset = [i + (side - (len(series) - 1) / 2) * width for i in x]
        for ax, column in zip(axes, (1, 2), strict=True):
            present = [(o, r[column][side]) for o, r in zip(offset, rows, strict=True) if r[column][side] is not None]
            ax.bar(
                [o for o, _ in present],
                [v for _, v in present],
                width=width,
                color=colour or f"C{side}",
                label=name if column == 1 else None,
            )
    for ax, title in zip(axes, ("test accuracy at best epoch (%)", "wall time (minutes)"), strict=True):
        ax.set_xticks(x, [r[0] for r in rows], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.22, wspace=0.25)
    return fig
