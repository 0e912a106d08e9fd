"""One driver per suite folder: an exclusive lock, or a lease object where the store has no file locks.

On a local folder or a mount the lock is `flock` on `<suite>/.lock`, which holds the owner's JSON. The
kernel drops it when the driver dies in any way (SIGKILL, out of memory), so a dead owner never blocks.
On object storage the lease is `<suite>/lease.json` (owner and expiry), created with a conditional write
and renewed by a thread; a driver that dies stops renewing it and it lapses after `lease_seconds()`, or at
once for a driver of this machine whose process is gone.
"""

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from runner.errors import UserError
from runner.store.storage import Storage
from schemas import Owner

LOCK = ".lock"
LEASE = "lease.json"


def lease_seconds() -> float:
    """How long a lease on object storage lasts without renewal ($GRIDRUN_LEASE_SECONDS, default 60)."""
    return float(os.environ.get("GRIDRUN_LEASE_SECONDS", 60))


def me(run_id: str) -> Owner:
    """The owner record of this process."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    return Owner(
        run_id=run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        command=" ".join(argv)[:300],
        since=datetime.now(UTC),
    )


def _parse(data: bytes | None) -> Owner | None:
    if not data:
        return None
    try:
        return Owner.model_validate_json(data)
    except ValidationError:
        return None


class Busy(UserError):
    """Another driver holds the suite folder."""


def busy(where: str, holder: Owner | None) -> Busy:
    who = holder.describe() if holder else "a gridrun whose owner record is not readable"
    cmd = f" ({holder.command})" if holder and holder.command else ""
    return Busy(
        f"{where} is in use by another gridrun: {who}{cmd}. Nothing was run, nothing was changed. "
        "Fix: wait for it to end (`gridrun status` shows its jobs), stop it, or run again with --wait to wait for it."
    )


class SuiteLock:
    """Held by the one driver that runs a suite's jobs into a results folder."""

    def __init__(self, storage: Storage, owner: Owner) -> None:
        self.storage = storage
        self.owner = owner
        self._fd: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._made: list[Path] = []
        self.lost = False  # a lease another driver took after it lapsed (this one was stalled too long)

    # ---- taking and giving back ----

    def acquire(self, wait: bool = False, say=print) -> None:
        """Take the suite folder, or raise Busy naming the holder; with `wait`, wait until it is free."""
        told = False
        while not self._try():
            holder = holder_of(self.storage)
            if not wait:
                raise busy(self.storage.url, holder)
            if not told:
                say(f"waiting for {self.storage.url}: held by {holder.describe() if holder else 'another gridrun'}")
                told = True
            time.sleep(1.0)

    def _try(self) -> bool:
        if self.storage.local is not None:
            return self._try_local(self.storage.local)
        return self._try_lease()

    def _try_local(self, folder: Path) -> bool:
        if not self._made:  # the folders this lock creates, removed again if the run writes nothing in them
            missing = [folder, *folder.parents]
            self._made = missing[: next(i for i, p in enumerate(missing) if p.exists())]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link. Fix: remove it; gridrun makes its own lock file there.")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before may have removed the file after this one opened it: then this lock guards
            # nothing, and the next try opens the file that is there now.
            if os.fstat(fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.owner.model_dump_json().encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return True

    def _lease(self) -> bytes:
        expires = datetime.now(UTC) + timedelta(seconds=lease_seconds())
        return self.owner.model_copy(update={"expires": expires}).model_dump_json().encode()

    def _try_lease(self) -> bool:
        if not self.storage.create_bytes(LEASE, self._lease()):
            current = _parse(self.storage.read_bytes(LEASE))
            if current is not None and _live(current):
                return current.run_id == self.owner.run_id
            # Lapsed (its driver died) or unreadable: take it over.
            self.storage.remove(LEASE)
            if not self.storage.create_bytes(LEASE, self._lease()):
                return False
        self._renewer = threading.Thread(target=self._renew, name="gridrun-lease", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        every = max(0.5, lease_seconds() / 4)
        while not self._stop.wait(every):
            with contextlib.suppress(Exception):  # a store that hiccups: the next renewal tries again
                current = _parse(self.storage.read_bytes(LEASE))
                if current is not None and current.run_id != self.owner.run_id:
                    self.lost = True
                    return
                self.storage.write_bytes(LEASE, self._lease())

    def release(self) -> None:
        """Give the suite folder back (the lease removed, the lock file emptied and unlocked)."""
        self._stop.set()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                if self._made and os.listdir(self._made[0]) == [LOCK]:
                    # Nothing was run into the folders this lock made (a refused run): leave no trace.
                    os.unlink(self._made[0] / LOCK)
                    for folder in self._made:
                        os.rmdir(folder)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._renewer is not None:
            self._renewer.join(timeout=5)
            with contextlib.suppress(Exception):
                current = _parse(self.storage.read_bytes(LEASE))
                if current is not None and current.run_id == self.owner.run_id:
                    self.storage.remove(LEASE)
            self._renewer = None

    def __enter__(self) -> "SuiteLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_of(storage: Storage) -> Owner | None:
    """The live driver holding the suite folder at `storage`, or None when none does (or its lease lapsed)."""
    if storage.local is not None:
        path = storage.local / LOCK
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: by whom is in the file (empty for an instant after it is taken)
                owner = _parse(os.pread(fd, 4096, 0))
                return owner or Owner(run_id="?", host="?", pid=0, since=datetime.now(UTC))
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
    owner = _parse(storage.read_bytes(LEASE))
    return owner if owner is not None and _live(owner) else None


def _live(owner: Owner) -> bool:
    """Whether a lease's holder may still be running: its lease has not lapsed and, when it ran on this
    machine, its process is still there (a driver killed a moment ago frees the suite folder at once)."""
    if owner.expires is None or owner.expires <= datetime.now(UTC):
        return False
    if owner.host == socket.gethostname() and owner.pid > 0:
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process of that pid: alive
            pass
    return True


__all__ = ["LEASE", "LOCK", "Busy", "SuiteLock", "holder_of", "lease_seconds", "me"]
