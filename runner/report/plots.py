"""The report's plots, drawn with matplotlib's Agg renderer and written as PNG files.

A plot is drawn again only when its inputs change: the hash of each file's inputs is kept in
plots/.cache.json, so writing the report again after each finished job costs little. Figures are
made without pyplot: no global state, no GUI backend, safe in any thread.
"""

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.report.document import Figure
from runner.report.tables import FRAMEWORK_NAMES, Pair
from schemas import RunResult

# Bump when the look of the plots changes, so cached files are drawn again.
STYLE_VERSION = 1
DPI = 80
CACHE_FILE = ".cache.json"
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def slug(label: str) -> str:
    """A run label as part of a file name: suite/job becomes suite--job."""
    return label.replace("/", "--")


def _matplotlib_figure(**kwargs: Any) -> Any:
    # A Figure made without pyplot saves PNG through the Agg renderer whatever backend the process chose.
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(dpi=DPI, **kwargs)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Plotter:
    """Draws plots into one folder, reusing files whose inputs have not changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._cache: dict[str, str] = json.loads((self.folder / CACHE_FILE).read_text())
        except (OSError, ValueError):
            self._cache = {}
        self._used: set[str] = set()
        self.drawn = 0

    def _plot(self, name: str, caption: str, inputs: Any, draw: Callable[[], Any]) -> Figure:
        key = hashlib.sha256(json.dumps([STYLE_VERSION, inputs], sort_keys=True).encode()).hexdigest()
        path = self.folder / name
        self._used.add(name)
        if self._cache.get(name) == key and path.is_file():
            return Figure(path, path.read_bytes(), caption)
        fig = draw()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        png = buf.getvalue()
        _write_atomic(path, png)
        self._cache[name] = key
        self.drawn += 1
        return Figure(path, png, caption)

    def finish(self) -> None:
        """Remove plots this folder's cache knows but this report no longer draws; save the cache."""
        for name in set(self._cache) - self._used:
            (self.folder / name).unlink(missing_ok=True)
            del self._cache[name]
        _write_atomic(self.folder / CACHE_FILE, json.dumps(self._cache, indent=1, sort_keys=True).encode())

    def curves(self, label: str, result: RunResult) -> Figure:
        """Train, validation and test accuracy per epoch of one run, best epoch marked."""
        series = {
            "train": [e.train_accuracy for e in result.epochs],
            "val": [e.val_accuracy for e in result.epochs],
            "test": [e.test_accuracy for e in result.epochs],
        }
        epochs = [e.epoch for e in result.epochs]
        inputs = [label, epochs, series, result.best_epoch]

        def draw() -> Any:
            fig = _matplotlib_figure(figsize=(5.2, 3.3))
            ax = fig.add_subplot()
            for name, values in series.items():
                ax.plot(epochs, [v * 100 for v in values], marker="o", ms=3, color=COLORS[name], label=name)
            ax.axvline(result.best_epoch, ls=":", color="0.4", label=f"best epoch ({result.best_epoch})")
            _epoch_axis(ax, epochs)
            ax.set_title(label, fontsize=10)
            ax.legend(loc="lower right", fontsize=8)
            fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)
            return fig

        return self._plot(f"curves-{slug(label)}.png", f"{label}: accuracy per epoch", inputs, draw)

    def overlay(self, runs: list[tuple[str, RunResult]]) -> Figure:
        """Validation and test accuracy per epoch of every run, on one pair of axes."""
        data = [
            (label, [e.epoch for e in r.epochs], [e.val_accuracy for e in r.epochs], [e.test_accuracy for e in r.epochs])
            for label, r in runs
        ]
        legend = len(data) <= 20  # beyond that a legend hides the plot; the per-run plots name each line

        def draw() -> Any:
            rows = -(-len(data) // 2) if legend else 0
            fig = _matplotlib_figure(figsize=(10, 3.8 + 0.22 * rows))
            axes = fig.subplots(1, 2, sharey=True)
            cmap = _cmap("tab20" if len(data) > 10 else "tab10")
            for i, (label, epochs, val, test) in enumerate(data):
                color = cmap(i % cmap.N)
                axes[0].plot(epochs, [v * 100 for v in val], color=color, lw=1.3, label=label)
                axes[1].plot(epochs, [v * 100 for v in test], color=color, lw=1.3)
            all_epochs = sorted({e for _, epochs, _, _ in data for e in epochs})
            for ax, title in zip(axes, ("Validation accuracy", "Test accuracy"), strict=True):
                _epoch_axis(ax, all_epochs)
                ax.set_title(title, fontsize=10)
            bottom = 0.14
            if legend:
                bottom = (0.5 + 0.22 * rows) / (3.8 + 0.22 * rows) + 0.1
                fig.legend(loc="lower center", ncols=2, fontsize=8, frameon=False)
            fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=bottom, wspace=0.06)
            return fig

        return self._plot("overlay.png", "All runs: validation and test accuracy per epoch", data, draw)

    def confusion(self, label: str, result: RunResult) -> Figure:
        """Confusion matrix heatmap: colour is the share of each true class, text the count."""
        import numpy as np

        cm = np.asarray(result.confusion_matrix, dtype=float)
        names = result.class_names
        inputs = [label, result.confusion_matrix, names]

        def draw() -> Any:
            n = len(names)
            side = min(3.2 + 0.35 * n, 12)
            fig = _matplotlib_figure(figsize=(side + 0.8, side))
            ax = fig.add_subplot()
            share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            if n <= 20:  # counts stay readable up to about 20 classes
                for i in range(n):
                    for j in range(n):
                        colour = "white" if share[i, j] > 0.55 else "black"
                        ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color=colour)
            if n <= 50:
                ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
                ax.set_yticks(range(n), names, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{label}: confusion matrix (test)", fontsize=10)
            fig.subplots_adjust(left=0.2, right=0.98, top=0.93, bottom=0.2)
            return fig

        return self._plot(f"confusion-{slug(label)}.png", f"{label}: confusion matrix on the test split", inputs, draw)

    def tradeoff(self, runs: list[tuple[str, RunResult]]) -> Figure:
        """Wall time against test accuracy at the best epoch; the runs no other beats on both are joined."""
        points = [(label, r.timing.total_seconds / 60, r.best_test_accuracy * 100) for label, r in runs]

        def draw() -> Any:
            fig = _matplotlib_figure(figsize=(7, 4.2))
            ax = fig.add_subplot()
            ax.scatter([p[1] for p in points], [p[2] for p in points], s=18, color="#1f77b4", zorder=3)
            front, best = [], -1.0
            for label, minutes, acc in sorted(points, key=lambda p: (p[1], -p[2])):
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

        return self._plot("tradeoff.png", "Accuracy against wall time", points, draw)

    def frameworks(self, pairs: list[Pair]) -> Figure:
        """The same model in PyTorch and TensorFlow: accuracy and wall time side by side."""
        rows = []
        for p in pairs:
            t, f = p.torch.result, p.tensorflow.result
            assert t is not None and f is not None
            rows.append([
                f"{p.model}\n{p.weights}\n{p.dataset}",
                [t.best_test_accuracy * 100, f.best_test_accuracy * 100],
                [t.timing.total_seconds / 60, f.timing.total_seconds / 60],
            ])  # fmt: skip

        def draw() -> Any:
            fig = _matplotlib_figure(figsize=(max(6, 1.6 * len(rows) + 3), 4))
            axes = fig.subplots(1, 2)
            x = range(len(rows))
            for side, colour in enumerate(("#ee4c2c", "#ff8f00")):  # PyTorch and TensorFlow brand colours
                name = FRAMEWORK_NAMES[("torch", "tensorflow")[side]]
                offset = [i + (side - 0.5) * 0.38 for i in x]
                axes[0].bar(offset, [r[1][side] for r in rows], width=0.38, color=colour, label=name)
                axes[1].bar(offset, [r[2][side] for r in rows], width=0.38, color=colour)
            for ax, title in zip(axes, ("test accuracy at best epoch (%)", "wall time (minutes)"), strict=True):
                ax.set_xticks(list(x), [r[0] for r in rows], fontsize=7)
                ax.set_title(title, fontsize=10)
                ax.grid(axis="y", alpha=0.3)
            axes[0].legend(fontsize=8)
            fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.22, wspace=0.25)
            return fig

        return self._plot("frameworks.png", "Same model in both frameworks", rows, draw)


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _epoch_axis(ax: Any, epochs: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
