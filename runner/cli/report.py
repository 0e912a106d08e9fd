"""Commands `gridrun report`, `gridrun compare` and `gridrun tensorboard`."""

from pathlib import Path

import typer


def report(
    suite_dir: str = typer.Argument(..., help="A suite's results folder, e.g. results/smoke or s3://bucket/x/smoke."),
) -> None:
    """Write report.md, report.html and plots/*.png into a suite's results folder."""
    from runner.cli.app import console
    from runner.report import write_suite_report
    from runner.report.runs import load_suite
    from runner.store import ResultsStore

    suite = ResultsStore.open(suite_dir).as_suite()
    if suite is None:
        load_suite(suite_dir)  # raises the one clear message of what the folder is instead
        return
    written = write_suite_report(suite)
    md, page, plots = written[0], written[1], written[2:]
    console.print(f"report: {page}\n        {md}\n        {len(plots)} plots in {suite.url}/plots", highlight=False)


def compare(
    paths: list[str] = typer.Argument(..., help="Results, suite or job folders (paths or URLs), in any mix."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the comparison, with plots, to a .md or .html file."
    ),
) -> None:
    """Compare runs of any suites: the report's tables, printed; with --out also written to a file."""
    from runner.cli.app import console
    from runner.report import compare as build
    from runner.report import to_console

    doc, written = build(paths, out)
    to_console(doc, console)
    if written:
        console.print(f"\nwritten: {written[0]} ({len(written) - 1} plots in {written[-1].parent})", highlight=False)


def tensorboard(
    results: str = typer.Argument("results", help="Results folder or URL (or one suite's or one job's folder)."),
    port: int = typer.Option(6006, "--port", "-p", min=0, max=65535, help="Port on 127.0.0.1; 0 picks a free one."),
) -> None:
    """TensorBoard over every run of the results folder, each named <suite>/<job>, until Ctrl-C."""
    from runner.cli.app import console
    from runner.report.tensorboard import serve

    serve(results, port, say=lambda line: console.print(line, highlight=False, soft_wrap=True))


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(compare)
    app.command()(tensorboard)
