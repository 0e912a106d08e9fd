"""A Document as Markdown, as one self-contained HTML page (plots inlined as base64 PNG), or to the terminal."""

import base64
import html
import os
import re
from pathlib import Path

from runner.report.document import Document, Figure, Table

_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
        "|" + "|".join("---:" if row_numeric else "---" for row_numeric in _numeric_columns(table)) + "|",
    ]
    for row in table.rows:
        cells = [f"**{_md_cell(c.text)}**" if c.best else _md_cell(c.text) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    return "\n".join(lines)


def _numeric_columns(table: Table) -> list[bool]:
    return [bool(table.rows) and all(row[i].numeric for row in table.rows) for i in range(len(table.headers))]


def _md_figure(fig: Figure, base: Path) -> str:
    return f"![{fig.caption}]({Path(os.path.relpath(fig.path, base)).as_posix()})"


def markdown(doc: Document, base: Path) -> str:
    """Markdown with images linked relative to `base`, the folder the file is written to."""
    out = [f"# {doc.title}", "", *(f"{line}\n" for line in doc.intro)]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(_md_table(block))
            elif isinstance(block, Figure):
                out.append(_md_figure(block, base))
            elif isinstance(block, list):
                out.append("\n".join(_md_figure(f, base) for f in block))
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


# HTML

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1.5rem; color: #1b1f24; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: 1rem; } .scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; white-space: nowrap; }
th { background: #f3f5f7; text-align: left; white-space: normal; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #e6f4ea; font-weight: 600; } td.wrap { white-space: normal; min-width: 20rem; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: 12px; padding-top: .3rem; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: .5rem 0; } figcaption { color: #57606a; font-size: 12px; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
"""


def _inline(text: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", html.escape(text))


def _html_table(table: Table) -> str:
    numeric = _numeric_columns(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            classes = [c for c, on in (("num", numeric[i]), ("best", cell.best), ("wrap", len(cell.text) > 60)) if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{html.escape(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html_figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode()
    caption = html.escape(fig.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
    )


def html_page(doc: Document) -> str:
    """One page that needs nothing else: styles inline, plots as data: URLs."""
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in doc.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        *(f"<p>{_inline(line)}</p>" for line in doc.intro),
        f"<nav>{nav}</nav>",
    ]
    for section in doc.sections:
        parts.append(f'<section id="{_anchor(section.title)}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, Figure):
                parts.append(_html_figure(block))
            elif isinstance(block, list):
                parts.append('<div class="grid">' + "".join(_html_figure(f) for f in block) + "</div>")
            else:
                parts.append(f"<p>{_inline(block)}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# Terminal


def to_console(doc: Document, console: "object") -> None:
    """Print the tables and text with rich; plots are only named (they need a file)."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    def inline(text: str) -> str:
        return _BOLD.sub(r"[bold]\1[/bold]", escape(text))

    print_ = console.print  # type: ignore[attr-defined]
    print_(f"[bold underline]{escape(doc.title)}[/]")
    for line in doc.intro:
        print_(inline(line))
    for section in doc.sections:
        print_()
        print_(f"[bold]{escape(section.title)}[/]")
        for block in section.blocks:
            if isinstance(block, Table):
                numeric = _numeric_columns(block)
                table = RichTable(caption=block.caption or None, caption_justify="left", show_lines=False)
                for header, num in zip(block.headers, numeric, strict=True):
                    table.add_column(header, justify="right" if num else "left", overflow="fold")
                for row in block.rows:
                    table.add_row(*(f"[bold green]{escape(c.text)}[/]" if c.best else escape(c.text) for c in row))
                print_(table)
            elif isinstance(block, Figure | list):
                for fig in block if isinstance(block, list) else [block]:
                    print_(f"plot: {escape(str(fig.path))}")
            else:
                print_(inline(block))
