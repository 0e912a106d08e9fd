"""Commands `gridrun report`, `gridrun compare` and `gridrun tensorboard`."""

from pathlib import Path

import typer


def report(
    suite_dir: Path = typer.Argument(..., help="A suite's results folder, e.g. results/smoke."),
) -> None:
    """Write report.md, report.html and plots/*.png into a suite's results folder."""
    from runner.cli.app import console
    from runner.report import write_report

    written = write_report(suite_dir)
    md, page, plots = written[0], written[1], written[2:]
    console.print(f"report: {page}\n        {md}\n        {len(plots)} plots in {suite_dir / 'plots'}", highlight=False)


def compare(
    paths: list[Path] = typer.Argument(..., help="Results folders, suite folders or job folders, in any mix."),
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
    results: Path = typer.Argument(Path("results"), help="Results folder (or one suite's or one job's folder)."),
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
