"""Verbs for a remote Ray cluster through its Jobs API: submit, jobs, logs, cancel, fetch."""

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from runner.schedule.remote import DEFAULT_ADDRESS, REMOTE_RESULTS, JobsApi

ApiOpt = Annotated[
    str,
    typer.Option(
        "--address",
        envvar="RAY_API_SERVER_ADDRESS",
        help="The cluster's Jobs API (its dashboard), e.g. http://head:8265. The token comes from "
        "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.",
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="Allow a cluster beyond this machine without a token (see README: unsafe)."),
]
IdArg = Annotated[str, typer.Argument(help="Submission id, as `gridrun submit` printed it.")]
EXIT_BY_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def register(app: typer.Typer) -> None:
    """Add the remote-cluster verbs to the gridrun app."""
    from runner.cli.app import console, err

    @app.command()
    def submit(
        suite: Annotated[Path, typer.Argument(help="Suite file, e.g. jobs/alexnet-challenge.yaml.")],
        address: ApiOpt = DEFAULT_ADDRESS,
        insecure: InsecureOpt = False,
        profile: Annotated[str | None, typer.Option("--profile", help="Profile to apply (as for run).")] = None,
        executor: Annotated[str | None, typer.Option("--executor", help="auto, process or docker.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Re-run jobs already done.")] = False,
        remote_results: Annotated[
            str,
            typer.Option(
                "--remote-results",
                help="Results root for the job's driver: a storage URL (s3://bucket/prefix) or a path on the cluster.",
            ),
        ] = REMOTE_RESULTS,
    ) -> None:
        """Send a suite to a Ray cluster as a Ray Job; print its submission id."""
        api = JobsApi(address, insecure)
        sid, results = api.submit(suite, remote_results, profile, executor, force)
        print(sid)
        err.print(
            f"submitted {suite} to {api.address} (Ray {api.ray_version}); its results: {results} on the cluster.\n"
            f"  follow:  gridrun logs {sid} --follow --address {api.address}\n"
            f"  results: gridrun fetch {sid} --results results --address {api.address}",
            highlight=False,
        )

    @app.command()
    def jobs(address: ApiOpt = DEFAULT_ADDRESS, insecure: InsecureOpt = False) -> None:
        """List the cluster's Ray Jobs: gridrun's show their suite."""
        api = JobsApi(address, insecure)
        table = Table(title=f"jobs on {api.address}", title_justify="left")
        for col in ("submission id", "status", "suite", "started", "ended", "message"):
            table.add_column(col, overflow="fold")
        for s in api.jobs():
            table.add_row(s.id, s.status, s.suite, _when(s.started), _when(s.ended), s.message)
        console.print(table)

    @app.command()
    def logs(
        job_id: IdArg,
        address: ApiOpt = DEFAULT_ADDRESS,
        insecure: InsecureOpt = False,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    ) -> None:
        """Print a job's log (its gridrun driver's output); with --follow, until it ends (exit 0 if it succeeded)."""
        api = JobsApi(address, insecure)
        if not follow:
            sys.stdout.write(api.logs(job_id))
            return
        final = api.follow(job_id, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        err.print(f"job {job_id}: {final.status}", highlight=False)
        raise typer.Exit(EXIT_BY_STATUS.get(final.status, 1))

    @app.command()
    def cancel(job_id: IdArg, address: ApiOpt = DEFAULT_ADDRESS, insecure: InsecureOpt = False) -> None:
        """Stop a job: its gridrun driver cancels every run and marks it cancelled."""
        api = JobsApi(address, insecure)
        if api.cancel(job_id):
            console.print(f"stopping {job_id}: its runs end as cancelled", highlight=False)
        else:
            console.print(f"{job_id} had already ended ({api.get(job_id).status})", highlight=False)

    @app.command()
    def fetch(
        job_id: IdArg,
        results: Annotated[str, typer.Option("--results", help="Results root to copy into (path or URL).")] = "results",
        address: ApiOpt = DEFAULT_ADDRESS,
        insecure: InsecureOpt = False,
    ) -> None:
        """Copy a submitted suite's results from where its driver wrote them into --results."""
        from runner.schedule.remote import fetch as fetch_results

        api = JobsApi(address, insecure)
        files, size = fetch_results(api, job_id, results, say=lambda m: console.print(m, highlight=False))
        console.print(f"fetched {files} file(s), {size / 2**20:.1f} MiB, into {results}", highlight=False)
