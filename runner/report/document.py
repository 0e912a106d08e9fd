"""A report as data: sections of tables, paragraphs and figures, rendered alike to Markdown, HTML and the terminal.

Text may hold **bold** spans, the one markup every renderer understands.
"""

from dataclasses import dataclass, field
from pathlib import Path

from runner.store.layout import atomic_path

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    """A table cell; `best` marks the best value of its row or column."""

    text: str
    best: bool = False
    numeric: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG plot: written to `path`, embedded in HTML from `png`."""

    path: Path
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list["Block"] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str]
    sections: list[Section]


def pct(x: float | None) -> str:
    return MISSING if x is None else f"{x:.2%}"


def count(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def rate(x: float | None) -> str:
    return MISSING if x is None else f"{x:,.0f}"


def speed(result) -> str:
    """A run's images/s, and each replica's share when it trained data-parallel: '1,200 (600 a replica, 2)'."""
    replicas = result.environment.replicas
    total = rate(result.images_per_second)
    return total if replicas == 1 else f"{total} ({rate(result.images_per_second / replicas)} a replica, {replicas})"


def duration(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Chart:
    """A line chart drawn as inline SVG in HTML: series of (name, x values, y values); `marker` an x to mark."""

    title: str
    series: list[tuple[str, list[int], list[float]]]
    percent: bool = False
    marker: int | None = None


@dataclass
class Heatmap:
    """A square matrix of counts, each row coloured by its share: a confusion matrix."""

    names: list[str]
    counts: list[list[int]]
    caption: str = ""


@dataclass
class Sweep:
    """The interactive view of many runs: `data` drives the page's script; `table` is the same as plain rows."""

    data: dict[str, object]
    table: Table


Block = Table | Figure | str | list[Figure] | list[Chart] | Chart | Heatmap | Sweep


def write_text(path: Path, text: str) -> None:
    """Atomic, like every file of the results folder (store.layout.atomic_path): a browser never shows half a page."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
