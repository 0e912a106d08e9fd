"""`gridrun tensorboard`: one TensorBoard over a whole results tree, each run named <suite>/<job>.

A job writes its events into results/<suite>/<job>/tb/, which TensorBoard would name
'<suite>/<job>/tb' (and `--logdir_spec <suite>/<job>:<path>` names it '<suite>/<job>/.': the
multiplexer joins the group name with the path relative to it). So TensorBoard reads a view
instead: a temporary folder <suite>/<job> per job. On a local store each is a link to the job's tb
folder, which TensorBoard's directory walk follows; on object storage it is a copy of the job's event
files, brought up to date at every refresh (an event file that grew is fetched again), so that a run
in progress shows its new epochs. The view is refreshed while TensorBoard runs, so jobs that start
later appear too; removing it removes only links and copies.
"""

import shutil
import signal
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from runner.errors import UserError
from runner.store import JobStore, locate

DEFAULT_PORT = 6006
HOST = "127.0.0.1"
REFRESH_SECONDS = 5


def job_logdirs(where: Path | str) -> dict[str, JobStore]:
    """'<suite>/<job>' (a trial: '<suite>/<search>/<trial>') -> its folder, in a results tree, a suite or a job."""
    _, jobs = locate(where)
    return {f"{job.suite}/{job.label}": job for job in jobs}


class LogdirView:
    """A temporary folder with one entry per job, named <suite>/<job>: a link, or a copy of its events."""

    def __init__(self, results: Path | str) -> None:
        self.results = results
        self.folder = Path(tempfile.mkdtemp(prefix="gridrun-tensorboard-"))
        self.runs: list[str] = []
        self._copied: dict[str, dict[str, int]] = {}  # run -> event file -> size copied

    def refresh(self) -> list[str]:
        """Link or copy jobs that appeared since the last call, update the copies; return the new run names."""
        added = []
        for name, job in job_logdirs(self.results).items():
            entry = self.folder / name
            local = job.local
            if local is not None:
                if entry.is_symlink():
                    continue
                entry.parent.mkdir(parents=True, exist_ok=True)
                try:
                    entry.symlink_to(local.tb.resolve(), target_is_directory=True)
                except OSError as e:
                    raise UserError(f"cannot create the link {entry} -> {local.tb}: {e}. Fix: set TMPDIR to a folder "
                                    "on a file system that allows symbolic links.") from e  # fmt: skip
            else:
                if name in self._copied and not self._copy_events(name, job, entry):
                    continue
                if name not in self._copied:
                    self._copied[name] = {}
                    self._copy_events(name, job, entry)
            if name not in self.runs:
                added.append(name)
        self.runs += added
        return added

    def _copy_events(self, name: str, job: JobStore, entry: Path) -> bool:
        """Fetch the job's event files that are new or grew; whether any was."""
        have = self._copied[name]
        changed = False
        for rel, size in job.storage.files("tb").items():
            if have.get(rel) == size:
                continue
            job.storage.download(f"tb/{rel}", entry / rel)
            have[rel] = size
            changed = True
        return changed

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # unlinks the links, never follows them


def launch(logdir: Path, port: int = DEFAULT_PORT, reload_seconds: int = REFRESH_SECONDS) -> str:
    """Start TensorBoard in this process (server in a background thread) on 127.0.0.1; return its URL."""
    # TensorBoard's own switch for running without TensorFlow (its "notf" build): reading local event
    # files needs none, and importing TensorFlow would add seconds and gigabytes for nothing.
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard import program

    board = program.TensorBoard()
    # load_fast=false: the Python reader, whose directory walk follows the view's links.
    board.configure(logdir=str(logdir), host=HOST, port=port, load_fast="false", reload_interval=reload_seconds)
    try:
        return board.launch()
    except program.TensorBoardServerException as e:
        raise UserError(
            f"TensorBoard cannot listen on {HOST}:{port}: {e.msg}. "
            "Fix: choose another port with --port N, or --port 0 for any free one."
        ) from e


def serve(results: Path | str, port: int = DEFAULT_PORT, say: Callable[[str], None] = print) -> None:
    """Run TensorBoard over `results` until interrupted (Ctrl-C or SIGTERM)."""
    view = LogdirView(results)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        runs = view.refresh()
        url = launch(view.folder, port)
        say(
            f"TensorBoard at {url} over {results} ({len(runs)} job folders, runs named <suite>/<job>). Ctrl-C stops it."
        )
        if not runs:
            say("No job folders yet: runs appear here as `gridrun run` starts them.")
        while True:
            time.sleep(REFRESH_SECONDS)
            for name in view.refresh():
                say(f"new run: {name}")
    except KeyboardInterrupt:
        say("TensorBoard stopped.")
    finally:
        signal.signal(signal.SIGTERM, previous)
        view.close()
