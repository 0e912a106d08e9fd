"""A report as data: sections of tables, paragraphs and figures, rendered alike to Markdown, HTML and the terminal.

Text may hold **bold** spans, the one markup every renderer understands.
"""

from dataclasses import dataclass, field
from pathlib import Path

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
    blocks: list["Table | Figure | str | list[Figure]"] = field(default_factory=list)


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
