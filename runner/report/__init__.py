"""Reports: a suite's report.md, self-contained report.html and plots/*.png, and comparisons of any runs.

    write_report(Path("results/smoke"))         # what `gridrun report` and the end of `gridrun run` call
    compare([Path("results/a"), Path("results/b/job")], out=Path("cmp.html"))

Importing this package is cheap: matplotlib loads only when a plot is drawn.
"""

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from runner.errors import UserError
from runner.report import tables
from runner.report.document import Document, Figure, Section, write_text
from runner.report.plots import Plotter
from runner.report.render import html_page, markdown, to_console
from runner.report.runs import Run, collect, load_suite
from runner.report.search import SearchRuns, read_searches, search_section
from runner.report.sweep import PAGES, SWEEP_RUNS, page_name, sweep_block, write_run_pages
from runner.report.tables import Label
from runner.store import ResultsStore, SuiteStore

__all__ = ["REPORT_HTML", "REPORT_MD", "Run", "build_document", "compare", "to_console", "write_report"]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"


def build_document(
    runs: list[Run],
    title: str,
    label: Label,
    plotter: Plotter | None,
    base: Path | None,
    intro: list[str] = (),
    searches: list[SearchRuns] = (),
    pages: str | None = None,
) -> Document:
    """Every table, the conclusion and (with a plotter) every plot of a set of runs, and a section per search.

    Beyond SWEEP_RUNS runs, the sweep view stands for the per-run tables and plots; with `pages` (the folder of
    the runs' own pages, relative to the report) each run links to its page.
    """
    finished = [(label(r), r.result) for r in runs if r.result is not None]
    states = Counter(r.state for r in runs)
    lead = f"{len(runs)} runs: " + ", ".join(f"{n} {state}" for state, n in states.most_common()) + "."
    trials = sum(len(s.trials) for s in searches)
    if searches:
        lead += f" {len(searches)} search(es) of {trials} trial(s), in their own section."
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = Document(title, [*intro, f"{lead} Generated {stamp} by gridrun."], [])

    def add(title: str, *blocks: object) -> None:
        present = [b for b in blocks if b is not None]
        if present:
            doc.sections.append(Section(title, present))  # type: ignore[arg-type]

    if searches and not runs:  # a suite of a search alone: the job sections would hold nothing
        doc.sections += [search_section(search, plotter) for search in searches]
        if plotter is not None:
            plotter.finish()
        return doc

    sweep = len(runs) > SWEEP_RUNS
    add("Conclusion", *tables.conclusion(runs, label))
    if sweep:
        links = {i: f"{pages}/{page_name(label(r))}" for i, r in enumerate(runs)} if pages else {}
        add("Runs", sweep_block(runs, label, links))
    else:
        add("Summary", tables.summary_table(runs, label))
    if finished and not sweep:
        add(
            "Accuracy per epoch",
            plotter.overlay(finished) if plotter else None,
            [plotter.curves(name, r) for name, r in finished] if plotter else None,
        )
    pairs = tables.framework_pairs(runs)
    if pairs:
        add(
            *tables.framework_section(pairs),
            tables.framework_table(pairs, label),
            plotter.frameworks(pairs) if plotter else None,
        )
    same = tables.same_names(runs)
    if same:
        add(
            "Same name, different networks",
            "Zoo models of different libraries that share a name (case and underscores aside), side by side.",
            tables.same_name_table(same, label),
        )
    if finished and not sweep:
        add("Accuracy per hour", tables.tradeoff_table(runs, label), plotter.tradeoff(finished) if plotter else None)
        add("Per-class accuracy", *tables.per_class_tables(runs, label))
        if plotter:
            add("Confusion matrices", [plotter.confusion(name, r) for name, r in finished if r.class_names])
    problems = tables.problems_table(runs, label, base)
    subs = tables.substitutions_table(runs, label)
    add(
        "Failed, blocked and substituted runs",
        problems if problems.rows else "No run failed, was blocked or was cancelled.",
        subs if subs.rows else "No run used a substitute.",
    )
    unreadable = tables.unreadable_table(runs, label)
    if unreadable.rows:
        add("Unreadable files", unreadable)
    doc.sections += [search_section(search, plotter) for search in searches]
    if plotter is not None:
        plotter.finish()
    return doc


def _figures(doc: Document) -> list[Path]:
    paths = []
    for section in doc.sections:
        for block in section.blocks:
            for item in block if isinstance(block, list) else [block]:
                if isinstance(item, Figure):
                    paths.append(item.path)
    return paths


def _suite_description(suite_dir: Path) -> list[str]:
    try:
        import yaml

        text = yaml.safe_load((suite_dir / "suite.yaml").read_text()).get("description", "")
    except Exception:  # the report does not depend on the suite file; a missing or odd one is skipped
        return []
    return [str(text).strip()] if text else []


def write_report(suite_dir: Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png into a suite's results folder; return the paths written."""
    suite_dir = Path(suite_dir)
    runs = load_suite(suite_dir)
    suite = ResultsStore.open(suite_dir).as_suite()
    searches = read_searches(suite) if suite is not None else []
    plotter = Plotter(suite_dir / PLOTS)
    title = f"gridrun report: {suite_dir.name}"
    label: Label = lambda r: r.job  # noqa: E731
    doc = build_document(runs, title, label, plotter, suite_dir, _suite_description(suite_dir), searches, pages=PAGES)
    md, page = suite_dir / REPORT_MD, suite_dir / REPORT_HTML
    pages = _run_pages(runs, label, suite_dir / PAGES, f"gridrun run: {suite_dir.name}", REPORT_HTML)
    write_text(md, markdown(doc, suite_dir))
    write_text(page, html_page(doc))
    return [md, page, *_figures(doc), *pages]


def _run_pages(runs: list[Run], label: Label, folder: Path, title: str, home: str) -> list[Path]:
    """The runs' own pages of a sweep; none (and any earlier ones removed) for a report of a few runs."""
    return write_run_pages(runs if len(runs) > SWEEP_RUNS else [], label, folder, title, f"../{home}")


def write_suite_report(suite: SuiteStore) -> list[str]:
    """Write the report of a suite into its folder in the store; return where each file went."""
    with suite.local_copy(write_back=(REPORT_MD, REPORT_HTML, PLOTS, PAGES)) as folder:
        written = write_report(folder)
        if suite.storage.local is not None:
            return [str(p) for p in written]
        return [suite.storage.path_url(p.relative_to(folder).as_posix()) for p in written]


def _unique_labels(runs: list[Run], one_suite: bool) -> Label:
    """job (one suite) or suite/job; the same names from two results trees get #2, #3."""
    names: dict[int, str] = {}
    seen: Counter[str] = Counter()
    for run in runs:
        name = run.job if one_suite else run.name
        seen[name] += 1
        names[id(run)] = name if seen[name] == 1 else f"{name} #{seen[name]}"
    return lambda r: names[id(r)]


def compare(paths: list[Path | str], out: Path | None = None) -> tuple[Document, list[Path]]:
    """The report's tables over runs of any suites; with `out` (.md or .html) also written, with plots."""
    runs = collect(paths)
    suites = sorted({r.suite for r in runs})
    label = _unique_labels(runs, one_suite=len(suites) == 1)
    title = f"gridrun comparison: {', '.join(suites)}"
    if out is None:
        return build_document(runs, title, label, None, None), []
    out = Path(out)
    if out.suffix not in (".md", ".html"):
        raise UserError(f"--out {out} must end in .md or .html. Fix: e.g. --out {out.with_suffix('.html')}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist. Fix: create it or choose another path.")
    plotter = Plotter(out.parent / f"{out.stem}-plots")
    doc = build_document(runs, title, label, plotter, out.parent, pages=f"{out.stem}-runs")
    pages = _run_pages(runs, label, out.parent / f"{out.stem}-runs", title, out.name)
    write_text(out, markdown(doc, out.parent) if out.suffix == ".md" else html_page(doc))
    return doc, [out, *_figures(doc), *pages]
