"""`gridrun tensorboard`: one TensorBoard over a whole results tree, each run named <suite>/<job>.

A job writes its events into results/<suite>/<job>/tb/, which TensorBoard would name
'<suite>/<job>/tb' (and `--logdir_spec <suite>/<job>:<path>` names it '<suite>/<job>/.': the
multiplexer joins the group name with the path relative to it). So TensorBoard reads a view
instead: a temporary folder of links <suite>/<job> -> results/<suite>/<job>/tb, which TensorBoard's
directory walk follows. The view is refreshed while TensorBoard runs, so jobs that start later
appear too; removing it removes only links.
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
from runner.store.layout import JobPaths, SuitePaths

DEFAULT_PORT = 6006
HOST = "127.0.0.1"
REFRESH_SECONDS = 5


def job_logdirs(path: Path) -> dict[str, Path]:
    """'<suite>/<job>' -> the job's tb folder, for a results tree, one suite's folder or one job's folder."""
    path = Path(path)
    if (path / "spec.json").is_file():
        return {f"{path.parent.name}/{path.name}": JobPaths(path).tb}
    suites = [path] if SuitePaths(path).jobs() else sorted(p for p in path.iterdir() if p.is_dir())
    return {f"{s.name}/{job.dir.name}": job.tb for s in suites for job in SuitePaths(s).jobs()}


class LogdirView:
    """A temporary folder of links, one per job, named <suite>/<job>."""

    def __init__(self, results: Path) -> None:
        self.results = Path(results).resolve()
        self.folder = Path(tempfile.mkdtemp(prefix="gridrun-tensorboard-"))
        self.runs: list[str] = []

    def refresh(self) -> list[str]:
        """Link jobs that appeared since the last call; return their run names."""
        added = []
        for name, tb in job_logdirs(self.results).items():
            link = self.folder / name
            if link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                link.symlink_to(tb.resolve(), target_is_directory=True)
            except OSError as e:
                raise UserError(f"cannot create the link {link} -> {tb}: {e}. Fix: set TMPDIR to a folder on a "
                                "file system that allows symbolic links.") from e  # fmt: skip
            added.append(name)
        self.runs += added
        return added

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


def serve(results: Path, port: int = DEFAULT_PORT, say: Callable[[str], None] = print) -> None:
    """Run TensorBoard over `results` until interrupted (Ctrl-C or SIGTERM)."""
    results = Path(results)
    if not results.is_dir():
        raise UserError(
            f"{results} is not a folder. Fix: pass the results folder of `gridrun run` (default: results), "
            "a suite's folder results/<suite>, or a job's folder."
        )
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
