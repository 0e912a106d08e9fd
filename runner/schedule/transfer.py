"""Job folders through Ray, for nodes that do not share the results disk with the driver.

A task learns whether its node sees the driver's results folder from a marker file that the driver wrote
there with a random token (`shares_results`). Where it does not, the job runs in a folder on its node: the
driver seeds it with what it holds (the spec, and an earlier attempt's checkpoints to resume from) and pulls
what changed back into the results folder, every few seconds while the job runs (log, progress, TensorBoard
events and checkpoints: the live view, and resuming after a node loss, need them) and once more at the end.

Files travel in pieces of at most `chunk` bytes, so checkpoints of any size pass through Ray's object store.
Append-only files (log.txt, TensorBoard event files) travel as their new tail; any other file travels whole
into a temporary file that is renamed into place with its last piece, so a reader never sees half a file.
result.json always travels last: once it is there, the rest of the folder is too.
"""

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER_PREFIX = ".gridrun-marker-"
PART = ".gridrun-part"  # suffix of a file still arriving
LAST = "result.json"
DRIVER_OWNED = ("spec.json",)
MAX_PULL_ERRORS = 5  # the driver writes it; a node never sends it back
State = dict[str, list[int]]  # relative path -> [mtime_ns, size, bytes sent] of the version being sent


def chunk_bytes() -> int:
    """Largest piece that travels in one Ray object ($GRIDRUN_CHUNK_BYTES, default 16 MiB)."""
    return max(1024, int(os.environ.get("GRIDRUN_CHUNK_BYTES", 16 * 2**20)))


def sync_seconds() -> float:
    """How often a running job's folder is brought back ($GRIDRUN_SYNC_SECONDS, default 5)."""
    return max(0.2, float(os.environ.get("GRIDRUN_SYNC_SECONDS", 5)))


# --- shared or not -----------------------------------------------------------------------------


def write_marker(suite_dir: Path, run_id: str) -> tuple[Path, str]:
    """A file with a random token in the suite's results folder: a node that reads it back shares the disk."""
    token = secrets.token_hex(16)
    path = suite_dir / f"{MARKER_PREFIX}{run_id}"
    path.write_text(token)
    return path, token


def shares_results(marker: str, token: str) -> bool:
    """Whether this node sees the driver's results folder (the same file, not just the same path).

    GRIDRUN_SHARED_RESULTS=0 on a node makes it copy even where the path is visible (a disk that is
    local to each node but mounted at the same place, or one too slow to write checkpoints to)."""
    if os.environ.get("GRIDRUN_SHARED_RESULTS", "").strip().lower() in ("0", "no", "false"):
        return False
    try:
        return Path(marker).read_text() == token
    except OSError:
        return False


def node_root() -> Path:
    """Where jobs run on a node that does not share the results: $GRIDRUN_NODE_DIR, else <tmp>/gridrun-nodes."""
    return Path(os.environ.get("GRIDRUN_NODE_DIR") or Path(tempfile.gettempdir()) / "gridrun-nodes")


def attempt_dir(run_id: str, job: str, attempt: int, node_id: str) -> Path:
    """The folder of one attempt of one job on this node; the job folder is <it>/<suite>/<job>."""
    return node_root() / run_id / f"{job}-{attempt}-{node_id[:8]}"


# --- the node's side ---------------------------------------------------------------------------


def _append_only(rel: str) -> bool:
    return rel == "log.txt" or (rel.startswith("tb/") and ".tfevents." in rel)


def files(root: Path, skip: Iterable[str] = ()) -> list[str]:
    """Relative paths of the regular files under root: smallest first (status, progress, log and events reach
    the live view before a checkpoint does), result.json last. Hidden files are left out: they are markers,
    and the temporary files of atomic writes, renamed into place a moment later."""
    skipped = set(skip)
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") or name.endswith(PART):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            try:
                if rel not in skipped and path.is_file():
                    found.append((name == LAST, path.stat().st_size, rel))
            except OSError:
                continue  # removed while we looked
    return [rel for _, _, rel in sorted(found)]


def _next_piece(f: Any, rel: str, known: list[int] | None, budget: int) -> tuple[dict[str, Any] | None, bool]:
    """The next piece of an open file given what was sent of it, and whether more of it is left to send."""
    st = os.fstat(f.fileno())
    append = _append_only(rel)
    if append:
        sent = known[2] if known and known[2] <= st.st_size else 0  # shorter: rewritten, start over
        new = False
    else:
        new = known is None or (known[0], known[1]) != (st.st_mtime_ns, st.st_size)
        sent = 0 if new or known is None else known[2]
    if sent >= st.st_size and not (new and st.st_size == 0):
        return None, False
    if budget <= 0:
        return None, True
    f.seek(sent)
    data = f.read(min(st.st_size - sent, budget))
    piece = {"rel": rel, "append": append, "offset": sent, "total": st.st_size, "data": data}
    piece["state"] = [st.st_mtime_ns, st.st_size, sent + len(data)]
    return piece, sent + len(data) < st.st_size


def pull(root: str, state: State, chunk: int, skip: tuple[str, ...] = DRIVER_OWNED) -> dict[str, Any]:
    """What changed under root since `state`, at most `chunk` bytes of it (runs on the node, as a Ray task).

    Returns {"pieces": [...], "state": the new state, "complete": nothing left to send, "missing": no root}.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        return {"pieces": [], "state": state, "complete": True, "missing": True}
    state = {rel: list(v) for rel, v in state.items()}
    pieces: list[dict[str, Any]] = []
    budget = chunk
    for rel in files(base, skip):
        try:
            with open(base / rel, "rb") as f:  # one open file: a rename during the read cannot mix two versions
                piece, more = _next_piece(f, rel, state.get(rel), budget)
        except OSError:
            continue  # replaced or removed while we looked: the next pull sees it
        if piece is not None:
            state[rel] = piece.pop("state")
            pieces.append(piece)
            budget -= len(piece["data"])
        if more:
            return {"pieces": pieces, "state": state, "complete": False, "missing": False}
    return {"pieces": pieces, "state": state, "complete": True, "missing": False}


def plant(job_dir: Path, spec_json: str, seed: list[tuple[str, list[Any]]], get: Callable[[Any], bytes]) -> State:
    """Make a fresh job folder on this node from what the driver sent; the state of what the driver holds."""
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(spec_json)
    receive_files(job_dir, seed, get)
    state: State = {}
    for rel in files(job_dir, DRIVER_OWNED):
        st = (job_dir / rel).stat()
        state[rel] = [st.st_mtime_ns, st.st_size, st.st_size]
    return state


def remove(path: str) -> None:
    """Delete one attempt's folder on this node, and the run's folder once it is empty."""
    target = Path(path)
    shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(OSError):  # other attempts of the run are still there
        target.parent.rmdir()


# --- the driver's side -------------------------------------------------------------------------


def seed(job_dir: Path, chunk: int, skip: tuple[str, ...], put: Callable[[bytes], Any]) -> list[tuple[str, list[Any]]]:
    """The driver's files of a job, for the node of its next attempt (see send_files)."""
    return send_files(job_dir, files(job_dir, skip), chunk, put)


def send_files(root: Path, rels: Iterable[str], chunk: int, put: Callable[[bytes], Any]) -> list[tuple[str, list[Any]]]:
    """Files under root, each as the `put` (ray.put) of its pieces: (path, refs) for receive_files.

    One piece is read at a time: a file of many gigabytes goes to the object store, not into memory."""
    out = []
    for rel in rels:
        refs = []
        with open(root / rel, "rb") as f:
            while data := f.read(chunk):
                refs.append(put(data))
        out.append((rel, refs or [put(b"")]))
    return out


def receive_files(root: Path, sent: list[tuple[str, list[Any]]], get: Callable[[Any], bytes]) -> int:
    """Write what send_files sent under root, each file renamed into place once whole. Bytes written."""
    total = 0
    for rel, refs in sent:
        target = _inside(root, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name per process: two jobs on one node may receive the same file at once.
        part = target.with_name(f".{target.name}.{os.getpid()}{PART}")
        try:
            with open(part, "wb") as f:
                for ref in refs:
                    total += f.write(get(ref))
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return total


def _inside(root: Path, rel: str) -> Path:
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"refusing a path outside {root}: {rel!r}")
    return target


class Receiver:
    """Writes pulled pieces into a folder: tails appended, whole files renamed into place when complete."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.bytes = 0
        self.files = 0

    def apply(self, pieces: list[dict[str, Any]]) -> set[str]:
        """Write the pieces; the paths that arrived out of step and must be sent again from the start."""
        again: set[str] = set()
        for p in pieces:
            target = _inside(self.dest, p["rel"])
            target.parent.mkdir(parents=True, exist_ok=True)
            offset, data = p["offset"], p["data"]
            if p["append"]:
                have = target.stat().st_size if target.exists() else 0
                if offset > have:
                    again.add(p["rel"])
                    continue
                with open(target, "r+b" if target.exists() else "wb") as f:
                    f.truncate(offset)
                    f.seek(offset)
                    f.write(data)
            else:
                part = target.with_name(f".{target.name}{PART}")
                have = part.stat().st_size if part.exists() else 0
                if offset > have:
                    again.add(p["rel"])
                    continue
                with open(part, "r+b" if offset else "wb") as f:
                    f.seek(offset)
                    f.write(data)
                    f.truncate()
                    done = offset + len(data) >= p["total"]
                    if done:
                        f.flush()
                        os.fsync(f.fileno())
                if done:
                    os.replace(part, target)
                    self.files += 1
            self.bytes += len(data)
        return again

    def discard_partials(self) -> None:
        """Remove files that did not finish arriving."""
        if self.dest.is_dir():
            for part in self.dest.rglob(f"*{PART}"):
                part.unlink(missing_ok=True)


class Mirror:
    """The driver's side of one job attempt that runs in a folder on its node: pulls it into `dest`."""

    def __init__(self, node_id: str, local_dir: str, state: State, dest: Path, attempt: int) -> None:
        self.node_id = node_id
        self.local_dir = local_dir
        self.state = state
        self.attempt = attempt
        self.receiver = Receiver(dest)
        self.receiver.discard_partials()
        self.chunk = chunk_bytes()
        self.interval = sync_seconds()
        self.pending: Any = None  # the pull in flight
        self.pending_is_final = False
        self.next_at = 0.0
        self.finishing = False
        self.done = False
        self.lost = ""  # why pulling stopped early
        self.errors = 0  # pulls failed in a row

    def _start(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.pending = (
            _remote_pull()
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False))
            .remote(self.local_dir, self.state, self.chunk)
        )
        self.pending_is_final = self.finishing

    def finish(self) -> None:
        """The job ended: pull until everything is here (`done`)."""
        self.finishing = True
        self.next_at = 0.0

    def stop(self, why: str) -> None:
        """Pull no more (the node is gone); drop what did not finish arriving."""
        import ray

        if self.pending is not None:
            ray.cancel(self.pending, force=True)
            self.pending = None
        self.lost = why
        self.done = True
        self.receiver.discard_partials()

    def step(self) -> None:
        """Non-blocking: take a finished pull (and start the next one at once if more is waiting), or start
        one when it is due."""
        import ray

        if self.done:
            return
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if not ready:
                return
            try:
                out = ray.get(self.pending)
            except ray.exceptions.RayError as e:
                # A pull can fail once (its worker died); a node that is gone fails the job's task as well.
                self.pending, self.errors = None, self.errors + 1
                if self.errors >= MAX_PULL_ERRORS:
                    self.stop(f"could not read the job's folder on its node: {type(e).__name__}")
                else:
                    self.next_at = time.monotonic() + self.interval
                return
            self.errors = 0
            final = self.pending_is_final
            self.pending = None
            self.state = out["state"]
            if not out["complete"] or (self.finishing and not final):
                self._start()  # the node reads the next piece while this one is written here
            for rel in self.receiver.apply(out["pieces"]):
                self.state.pop(rel, None)
            if final and out["complete"]:
                self.done = True
                return
            if out["complete"]:
                self.next_at = time.monotonic() + self.interval
        if self.pending is None and time.monotonic() >= self.next_at:
            self._start()

    def drain(self, deadline: float) -> bool:
        """Block until done or the deadline (time.monotonic()); whether everything came back."""
        self.finish()
        while not self.done and time.monotonic() < deadline:
            self.step()
            time.sleep(0.05)
        return self.done and not self.lost

    def cleanup(self) -> Any:
        """Delete the attempt's folder on its node (a Ray task; its ref)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        attempt_root = str(Path(self.local_dir).parent.parent)
        return (
            _remote_remove()
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False))
            .remote(attempt_root)
        )


_REMOTES: dict[str, Any] = {}


def _remote_pull() -> Any:
    if "pull" not in _REMOTES:
        import ray

        # No CPU: a pull must run beside the job it reads, on a node whose CPUs the job holds.
        _REMOTES["pull"] = ray.remote(num_cpus=0, max_retries=0)(pull)
    return _REMOTES["pull"]


def _remote_remove() -> Any:
    if "remove" not in _REMOTES:
        import ray

        _REMOTES["remove"] = ray.remote(num_cpus=0, max_retries=0)(remove)
    return _REMOTES["remove"]


def fetch_folder(node_id: str, root: str, dest: Path, say: Callable[[str], None] = print) -> Receiver | None:
    """Copy the folder `root` on one node into `dest`, in pieces; None when the node has no such folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    receiver = Receiver(dest)
    state: State = {}
    remote = _remote_pull().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    while True:
        try:
            out = ray.get(remote.remote(root, state, chunk_bytes(), ()))
        except ray.exceptions.RayError as e:
            from runner.errors import UserError

            raise UserError(
                f"could not read {root} on node {node_id[:12]} ({type(e).__name__}): the node may be gone. "
                f"{receiver.files} file(s) arrived in {dest}. Fix: fetch again once the node is back."
            ) from None
        if out["missing"]:
            return None
        state = out["state"]
        for rel in receiver.apply(out["pieces"]):
            state.pop(rel, None)
        if out["complete"]:
            return receiver
        say(f"  {receiver.files} file(s), {receiver.bytes / 2**20:.1f} MiB so far")
