"""Mirror a job's local working folder into a Storage while the job runs, and completely when it ends."""

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: a Syncer needs nothing of its destination but `upload`
    from runner.store.storage import Storage

log = logging.getLogger(__name__)


class Syncer:
    """Uploads the files of `work_dir` that changed, every `interval` seconds, in a daemon thread.

    A change is a new (mtime_ns, size). Temp files (names starting with '.') and names in `skip` (a file or folder
    name at any depth, or a relative path) are never uploaded. Files in `last` (relative paths) are uploaded only by
    the final sync of `stop()`, after every other file is there: a reader takes result.json as "complete".

    Object stores have no append, so an append-only file (log.txt, TensorBoard event files) is re-uploaded whole
    when it changed; one written in place may be caught half-written by a periodic sync, and the next sync (at the
    latest the final one) uploads it again once it changed. Files removed locally are not removed from `dest`, and
    names the destination refuses (ValueError: see Storage) are skipped with a warning. An upload error in the thread
    is remembered (`error`) and retried at the next interval.
    """

    def __init__(
        self,
        work_dir: Path,
        dest: "Storage",
        interval: float = 2.0,
        last: tuple[str, ...] = ("result.json",),
        skip: tuple[str, ...] = (),
    ) -> None:
        self.work_dir = Path(work_dir)
        self.dest = dest
        self.interval = interval
        self.last = tuple(last)
        self.skip = frozenset(skip)
        self.error: BaseException | None = None
        self._uploaded: dict[str, tuple[int, int]] = {}  # rel -> (mtime_ns, size) as it was when read
        self._lock = threading.Lock()  # one sync at a time: the thread's, or the final one of stop()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is not None:
            raise RuntimeError("Syncer already started")
        self._thread = threading.Thread(target=self._run, name=f"gridrun-sync {self.dest}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.sync_once()
            except Exception as exc:  # the job goes on; the next interval retries, the final sync reports
                if self.error is None or type(exc) is not type(self.error):
                    log.warning("sync to %s failed, will retry: %s", self.dest, exc)
                self.error = exc

    def sync_once(self) -> int:
        """Upload what changed, except the `last` files; returns the bytes uploaded."""
        return self._sync(final=False)

    def stop(self, final: bool = True) -> None:
        """Stop the thread; when `final`, upload everything that changed, the `last` files strictly last."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if final:
            self._sync(final=True)  # raises what still fails: the caller must not report the job as stored

    def _changed(self) -> list[tuple[str, Path, tuple[int, int]]]:
        out = []
        for folder, dirs, names in os.walk(self.work_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in self.skip)
            for name in sorted(names):
                if name.startswith(".") or name in self.skip:
                    continue
                full = Path(folder, name)
                rel = full.relative_to(self.work_dir).as_posix()
                if any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in self.skip):
                    continue
                try:
                    st = full.stat()
                except OSError:  # removed meanwhile, or a broken link
                    continue
                sig = (st.st_mtime_ns, st.st_size)
                if self._uploaded.get(rel) != sig:
                    out.append((rel, full, sig))
        return out

    def _sync(self, final: bool) -> int:
        with self._lock:
            changed = self._changed()
            first = [c for c in changed if c[0] not in self.last]
            late = sorted((c for c in changed if c[0] in self.last), key=lambda c: self.last.index(c[0]))
            sent, failure = self._upload(first)
            if failure is None and final:
                # Only once everything else is there: a reader takes the presence of these as "complete".
                more, failure = self._upload(late)
                sent += more
            if failure is not None:
                self.error = failure
                raise failure
            if final:
                self.error = None
            return sent

    def _upload(self, items: list[tuple[str, Path, tuple[int, int]]]) -> tuple[int, BaseException | None]:
        sent, failure = 0, None
        for rel, full, sig in items:
            try:
                self.dest.upload(full, rel)
            except FileNotFoundError:
                if full.exists():  # the destination refused, not a source that went away
                    failure = failure or FileNotFoundError(f"{self.dest}/{rel}")
                continue
            except ValueError as exc:  # a name the destination refuses (see Storage): it never will take it
                log.warning("not copied to %s: %s", self.dest, exc)
                self._uploaded[rel] = sig
                continue
            except Exception as exc:
                failure = exc  # the others are still tried: less to do at the next attempt
                continue
            # The signature from before the read: a file changed during its upload differs and goes again.
            self._uploaded[rel] = sig
            sent += sig[1]
        return sent, failure
