"""A Document as Markdown, as one self-contained HTML page (plots inlined as base64 PNG), or to the terminal."""

import base64
import html
import json
import math
import os
import re
from importlib.resources import files
from pathlib import Path

from runner.report.document import Cell, Chart, Document, Figure, Heatmap, Sweep, Table

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
            elif isinstance(block, Sweep):
                out.append(_md_table(block.table))
            elif isinstance(block, Heatmap):
                out.append(_md_table(_heatmap_table(block)))
            elif isinstance(block, Figure):
                out.append(_md_figure(block, base))
            elif isinstance(block, Chart) or (isinstance(block, list) and block and isinstance(block[0], Chart)):
                continue  # drawn in the HTML page only
            elif isinstance(block, list):
                out.append("\n".join(_md_figure(f, base) for f in block))
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


def _heatmap_table(heat: Heatmap) -> Table:
    rows = [
        [Cell(name), *(Cell(str(n), numeric=True) for n in row)]
        for name, row in zip(heat.names, heat.counts, strict=False)
    ]
    return Table(["True \\ predicted", *heat.names], rows, heat.caption)


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
svg { border: 1px solid #eaeef2; background: #fff; max-width: 100%; height: auto; font-size: 11px; }
svg .axes line { stroke: #57606a; } svg .axes line.grid { stroke: #eaeef2; } svg text { fill: #1b1f24; }
svg .dot { cursor: pointer; fill-opacity: .75; } svg .dot.selected { stroke: #111; stroke-width: 2; fill-opacity: 1; }
svg .line { stroke-opacity: .45; cursor: pointer; } svg .line.selected { stroke-opacity: 1; stroke-width: 2.5; }
svg .tick { fill: #57606a; font-size: 10px; }
.controls { margin: .6rem 0; display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
.controls input[type=search] { font: inherit; padding: .25rem .5rem; width: 32rem; max-width: 100%; }
.tall { max-height: 70vh; overflow: auto; } .tall thead th { position: sticky; top: 0; z-index: 1; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer; }
tr.selected td { background: #fff8c5; } ul.legend { list-style: none; padding: 0; margin: .3rem 0; font-size: 12px; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .4rem; vertical-align: middle; }
td.heat { text-align: right; min-width: 2.2rem; }
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


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    """Round values spanning [low, high] at a step of 1, 2 or 5 times a power of ten."""
    if high <= low:
        return [low]
    rough = (high - low) / n
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]


CHART_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def _html_chart(chart: Chart) -> str:
    """A line chart as inline SVG: no image file, no script."""
    w, h, left, right, top, bottom = 460, 280, 56, 90, 24, 34
    points = [(x, y) for _, xs, ys in chart.series for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    def shown(y: float) -> str:
        return f"{y:.0%}" if chart.percent else f"{y:.3g}"

    out = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{html.escape(chart.title)}">',
           f'<text x="{left}" y="14" font-weight="600">{html.escape(chart.title)}</text><g class="axes">',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}"/>']  # fmt: skip
    for t in _ticks(y0, y1):
        out.append(f'<line class="grid" x1="{left}" y1="{py(t):.1f}" x2="{w - right}" y2="{py(t):.1f}"/>'
                   f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{shown(t)}</text>')  # fmt: skip
    for t in [t for t in _ticks(x0, x1) if float(t).is_integer()]:
        out.append(f'<text x="{px(t):.1f}" y="{h - bottom + 15}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 4}" text-anchor="middle">epoch</text></g>')
    if chart.marker is not None and x0 <= chart.marker <= x1:
        x = px(chart.marker)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#999" stroke-dasharray="3 3">'
                   f"<title>best epoch {chart.marker}</title></line>")  # fmt: skip
    for i, (name, xs, ys) in enumerate(chart.series):
        colour = CHART_COLOURS.get(name.split()[0], ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")[i % 4])
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=False) if math.isfinite(y))
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.8">'
                   f"<title>{html.escape(name)}</title></polyline>"
                   f'<text x="{w - right + 8}" y="{top + 14 + 16 * i}" fill="{colour}">'
                   f"{html.escape(name)}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)


def _html_heatmap(heat: Heatmap) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in heat.names)
    body = []
    for name, row in zip(heat.names, heat.counts, strict=False):
        total = sum(row) or 1
        cells = []
        for n in row:
            share = n / total
            ink = "#fff" if share > 0.55 else "#1b1f24"
            cells.append(f'<td class="heat" style="background:rgba(31,119,180,{share:.3f});color:{ink}">{n}</td>')
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    caption = f"<caption>{html.escape(heat.caption)}</caption>" if heat.caption else ""
    return (f'<div class="scroll"><table>{caption}<thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip


def _script_json(data: object) -> str:
    """JSON safe inside a <script> element: no "</" can close it, whatever a run's name holds."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _html_sweep(sweep: Sweep) -> str:
    script = files("runner.report").joinpath("sweep.js").read_text(encoding="utf-8")
    return "".join([
        '<div class="controls"><input id="sweep-filter" type="search" aria-label="filter runs" '
        'placeholder="filter: words, or lr&lt;0.01 best&gt;=0.8 framework=pytorch state!=succeeded">',
        '<span id="sweep-count"></span><button id="sweep-clear" type="button">Clear selection</button></div>',
        '<div class="grid"><figure><svg id="sweep-scatter" viewBox="0 0 640 360" width="640" height="360"></svg>',
        "<figcaption>Test accuracy at the best epoch against wall time; click a point to select its run.</figcaption>",
        '</figure><figure><svg id="sweep-curves" viewBox="0 0 640 360" width="640" height="360"></svg>',
        '<figcaption>The 5 best shown runs and the selected ones.</figcaption><ul class="legend" id="sweep-legend">',
        '</ul></figure></div><figure><svg id="sweep-parallel" viewBox="0 0 960 360" width="960" height="360"></svg>',
        "<figcaption>Parallel coordinates: each run across the values the runs vary and its test accuracy at the "
        "best epoch (colour: blue low, red high).</figcaption></figure>",
        '<div class="scroll tall">' + _html_table(sweep.table).replace("<table>", '<table id="sweep-table">', 1),
        "</div>",
        f'<script type="application/json" id="sweep-data">{_script_json(sweep.data)}</script>',
        f"<script>{script}</script>",
    ])  # fmt: skip


def _html_block(block: object) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Sweep):
        return _html_sweep(block)
    if isinstance(block, Heatmap):
        return _html_heatmap(block)
    if isinstance(block, Chart):
        return _html_chart(block)
    if isinstance(block, Figure):
        return _html_figure(block)
    if isinstance(block, list):
        return '<div class="grid">' + "".join(_html_block(item) for item in block) + "</div>"
    return f"<p>{_inline(str(block))}</p>"


def html_page(doc: Document, home: str | None = None) -> str:
    """One page that needs nothing else: styles inline, plots as data: URLs; `home` links back to a report."""
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in doc.sections)
    if home is not None:
        nav = f'<a href="{html.escape(home)}">← the report</a> {nav}'

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
        parts += [_html_block(block) for block in section.blocks]
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
            if isinstance(block, Sweep | Heatmap):
                block = block.table if isinstance(block, Sweep) else _heatmap_table(block)
            if isinstance(block, Chart) or (isinstance(block, list) and block and isinstance(block[0], Chart)):
                continue
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
