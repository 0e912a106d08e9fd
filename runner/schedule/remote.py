"""A suite as a Ray Job: submit it through the Jobs API, list, follow, stop, and bring its results back.

The suite file, its code: folder and gridrun's own code travel in the job's runtime_env (working_dir), so
the cluster needs only the libraries (Ray puts the working_dir on every node that runs one of its tasks). The
job's driver runs `gridrun run --address auto` on the cluster and writes the results to
`--remote-results`/<submission id>: a storage URL (s3://...) or a path on the cluster (by default
~/gridrun-results on the node that runs the job's driver). `gridrun fetch` copies them from there into a
folder here; no file travels through Ray. Every request carries Ray's token; it is never printed, and never put into
the job's runtime_env or metadata, which anyone who may list jobs can read.
"""

import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runner import __version__
from runner.errors import UserError
from runner.schedule import cluster as ray_cluster
from runner.suite import LoadedSuite, load_suite

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
REMOTE_RESULTS = "~/gridrun-results"
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray Jobs sends this to the job's driver on `gridrun cancel`: it is Ctrl-C for gridrun, which then
# cancels every job and marks it cancelled, within the wait below.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
CODE_PACKAGES = ("runner", "schemas")


@dataclass(frozen=True)
class Submission:
    """One Ray Job as `gridrun jobs` shows it."""

    id: str
    status: str
    suite: str
    results: str  # where its results are on the node that ran it ('' when not sent by gridrun)
    started: float | None
    ended: float | None
    message: str
    node_id: str


def same_release(theirs: str, ours: str) -> bool:
    """Same major.minor Ray release: the submitted driver runs on the cluster's Ray with this gridrun's code."""
    return theirs.split(".")[:2] == ours.split(".")[:2]


class JobsApi:
    """The Ray Jobs API of one cluster (its dashboard address), with the token on every request."""

    def __init__(self, address: str, insecure: bool = False) -> None:
        url = urlparse(address)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(
                f"--address {address!r} is not the cluster's Jobs API address. "
                f"Fix: give the head's dashboard address, e.g. --address http://head:8265 (default {DEFAULT_ADDRESS})."
            )
        self.address = address.rstrip("/")
        logging.getLogger("ray").setLevel(logging.WARNING)  # not Ray's "uploading package" chatter
        token = ray_cluster.auth_token()
        ray_cluster.require_token(address, url.hostname, token, insecure)
        ray_cluster.check_reachable(
            address,
            url.hostname,
            url.port or (443 if url.scheme == "https" else 80),
            fix="check the address and that the head runs its dashboard there (`ray start --head` serves it on 8265)",
        )
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ray_version = self._check_version()
        from ray.job_submission import JobSubmissionClient

        with self._errors():
            self.client = JobSubmissionClient(self.address, headers=dict(self._headers))

    def _check_version(self) -> str:
        """Ask the dashboard its Ray version (with the token): a refused token or another Ray release ends here."""
        import ray
        import requests

        try:
            r = requests.get(f"{self.address}/api/version", headers=self._headers, timeout=15)
        except requests.RequestException as e:
            raise UserError(f"cannot reach the Ray Jobs API at {self.address} ({type(e).__name__}).") from None
        if r.status_code in (401, 403):
            raise ray_cluster.token_refused(self.address, self._token)
        if r.status_code != 200:
            raise UserError(
                f"{self.address} answered {r.status_code} for /api/version: it is not a Ray dashboard with the Jobs "
                "API. Fix: give the head's dashboard address (port 8265 unless changed)."
            )
        theirs = r.json().get("ray_version", "unknown")
        if not same_release(theirs, ray.__version__):
            raise UserError(
                f"the Ray cluster at {self.address} runs Ray {theirs}; this gridrun uses Ray {ray.__version__}, and "
                "its jobs need the same Ray release on the cluster. Fix: run Ray "
                f"{'.'.join(ray.__version__.split('.')[:2])}.x on the cluster, or use gridrun from an environment with "
                f"`pip install 'ray[default]=={theirs}'`."
            )
        return theirs

    @contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        """Ray's SDK errors as one clear message."""
        import ray

        try:
            yield
        except ray.exceptions.AuthenticationError:
            raise ray_cluster.token_refused(self.address, self._token) from None
        except (RuntimeError, ConnectionError, ValueError) as e:
            text = str(e)
            if job_id and ("does not exist" in text or "404" in text):
                raise UserError(
                    f"there is no job {job_id!r} on the Ray cluster at {self.address}. "
                    f"Fix: `gridrun jobs --address {self.address}` lists them."
                ) from None
            raise UserError(f"the Ray Jobs API at {self.address} failed: {text.splitlines()[0][:300]}") from None

    # --- submit ----------------------------------------------------------------------------------

    def submit(
        self,
        suite: Path,
        remote_results: str = REMOTE_RESULTS,
        profile: str | None = None,
        executor: str | None = None,
        force: bool = False,
    ) -> tuple[str, str]:
        """Send the suite as a Ray Job; its submission id and where its results will be on the cluster."""
        loaded = load_suite(suite)  # a mistake in the suite is reported here, before anything is sent
        sid = f"gridrun-{loaded.name}-{secrets.token_hex(4)}"
        results = f"{remote_results.rstrip('/')}/{sid}"
        with tempfile.TemporaryDirectory(prefix="gridrun-submit-") as stage:
            staged = stage_dir(Path(stage), loaded)
            self._send(staged, Path(stage), sid, results, loaded.name, profile, executor, force)
        return sid, results

    def _send(
        self,
        staged: str,
        stage: Path,
        sid: str,
        results: str,
        suite: str,
        profile: str | None,
        executor: str | None,
        force: bool,
    ) -> None:
        """Submit the staged working_dir as the Ray Job `sid`, its driver running the staged suite."""
        args = ["run", staged, "--address", "auto"]
        args += ["--profile", profile] if profile else []
        args += ["--executor", executor] if executor else []
        args += ["--force"] if force else []
        entrypoint = f"python -m runner {shlex.join(args)} --results {_shell_path(results)}"
        with self._errors():
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=sid,
                runtime_env={
                    "working_dir": str(stage),
                    "env_vars": {**STOP_ENV, "PYTHONUNBUFFERED": "1", "GRIDRUN_SUBMISSION": sid},
                },
                metadata={"gridrun": __version__, "suite": suite, "results": results},
            )

    # --- the others ------------------------------------------------------------------------------

    def jobs(self) -> list[Submission]:
        with self._errors():
            details = self.client.list_jobs()
        return sorted((_submission(d) for d in details), key=lambda s: s.started or 0)

    def get(self, job_id: str) -> Submission:
        with self._errors(job_id):
            return _submission(self.client.get_job_info(job_id))

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self.client.get_job_logs(job_id)

    def follow(self, job_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> Submission:
        """Write the job's log as it grows, until it ends; its final state."""
        shown = 0
        while True:
            sub = self.get(job_id)
            text = self.logs(job_id)
            if len(text) > shown:
                write(text[shown:])
                shown = len(text)
            if sub.status in FINAL:
                return sub
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> bool:
        """Ask the job to stop (its jobs end as cancelled); False when it had already ended."""
        self.get(job_id)
        with self._errors(job_id):
            return self.client.stop_job(job_id)


def _submission(d: Any) -> Submission:
    meta = d.metadata or {}
    return Submission(
        id=d.submission_id or d.job_id or "",
        status=str(getattr(d.status, "value", d.status)),
        suite=meta.get("suite", ""),
        results=meta.get("results", "") if "gridrun" in meta else "",
        started=d.start_time / 1000 if d.start_time else None,
        ended=d.end_time / 1000 if d.end_time else None,
        message=(d.message or "").splitlines()[0][:200] if d.message else "",
        node_id=d.driver_node_id or "",
    )


def _shell_path(path: str) -> str:
    """A path for the job's shell command: ~ expands to the home of the user Ray runs as."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def stage_dir(stage: Path, loaded: LoadedSuite) -> str:
    """Fill the job's working_dir: gridrun's packages, the suite file and its code: folder, nothing else of this
    machine; the staged suite's path in it. Under suite/, the suite file and the code folder keep their places
    relative to each other (from the folder that holds both), so the suite's relative code: finds it there."""
    import runner

    if loaded.code is not None and Path(loaded.suite.code or "").expanduser().is_absolute():
        relative = os.path.relpath(loaded.code, loaded.path.resolve().parent)
        raise UserError(
            f"{loaded.path}: code: {loaded.suite.code} is an absolute path; `gridrun submit` sends the code folder "
            "with the suite and finds it, as everywhere, relative to the suite file. Fix: write code: relative "
            f"to the suite file (e.g. code: {relative})"
        )
    root = Path(runner.__file__).resolve().parent.parent
    for package in CODE_PACKAGES:
        shutil.copytree(root / package, stage / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    suite = loaded.path.resolve()
    base = Path(os.path.commonpath([suite.parent, *([loaded.code] if loaded.code else [])]))
    copies = [(suite, suite.relative_to(base))]
    if loaded.code is not None:
        copies += [(path, loaded.code.relative_to(base) / rel) for rel, path in loaded.code_files()]
    for source, rel in copies:
        target = stage / "suite" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return f"suite/{suite.relative_to(base).as_posix()}"


def fetch(api: JobsApi, job_id: str, dest: str, say=print) -> tuple[int, int]:
    """Copy a submission's results from where its driver wrote them into `dest`; (files, bytes)."""
    from runner.store import Storage, copy_tree

    sub = api.get(job_id)
    if not sub.results:
        raise UserError(
            f"job {job_id} was not sent by `gridrun submit`: it has no gridrun results folder. "
            f"Fix: `gridrun jobs --address {api.address}` shows which jobs are gridrun's (a suite name)."
        )
    if sub.status not in FINAL:
        say(f"job {job_id} is still {sub.status}: fetching what is there so far")
    source = Storage.open(sub.results)  # a path with ~ is the home of this machine: checked just below
    if source.local is not None and not ray_cluster.is_loopback(urlparse(api.address).hostname or ""):
        raise UserError(
            f"the results of job {job_id} are in {sub.results} on the cluster's own disk, which this machine "
            "cannot read (gridrun carries no files through Ray). Fix: copy that folder from the cluster's driver "
            "node (rsync/scp), and submit later suites with --remote-results s3://bucket/prefix (or a path every "
            "machine mounts), which `gridrun fetch` reads from."
        )
    if not source.exists(""):
        raise UserError(
            f"job {job_id} has no results in {sub.results} yet ({sub.status}): it ended before writing any, or they "
            f"were removed. Fix: `gridrun logs {job_id} --address {api.address}` says how it ended."
        )
    return copy_tree(source, Storage.open(dest, create=True), say=say)
