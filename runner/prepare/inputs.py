"""The cache files a job reads (dataset and pretrained weights), and the cache on storage.

The prepare step puts every input into a local cache. With a cache URL (`--cache s3://...`) it also
publishes them there, each with its SHA-256 beside it (`<file>.sha256`); a job's task on any node then
fetches what it needs into that node's own cache and checks each file against its digest. A local cache
path is used in place (on a cluster it must be a path every node mounts). Files a suite names by path
(dataset.path, a weights file) are read where they are.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.store import Storage
from runner.train import data, weights
from schemas import JobSpec

DIGEST_SUFFIX = ".sha256"


@dataclass(frozen=True)
class Input:
    """One file a job reads from the cache: its path inside the cache, size and SHA-256."""

    rel: str
    size: int
    sha256: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _digest(path: Path) -> str:
    """The file's SHA-256, kept beside it so that it is computed once (files in the cache never change)."""
    side = path.with_name(path.name + DIGEST_SUFFIX)
    stat = path.stat()
    try:
        digest, size, mtime = side.read_text().split()
        if int(size) == stat.st_size and int(mtime) == stat.st_mtime_ns:
            return digest
    except (OSError, ValueError):
        pass
    digest = sha256_of(path)
    side.write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")
    return digest


def reads_cache(spec: JobSpec, cache: Path) -> bool:
    """Whether the job reads anything through the cache folder (a downloaded dataset, ImageNet weights)."""
    return bool(not spec.dataset.path and data.input_files(spec.dataset, cache)) or spec.model.weights == "imagenet"


def of_job(spec: JobSpec, cache: Path) -> list[Input]:
    """The files the job finds through its cache folder (a dataset without `path`, ImageNet weights);
    missing ones are left out."""
    paths = [] if spec.dataset.path else data.input_files(spec.dataset, cache)
    if spec.model.weights == "imagenet":
        paths.append(weights.weights_file(spec, cache))
    root = Path(cache).resolve()
    out = []
    for path in paths:
        path = path.resolve()
        if path.is_relative_to(root) and path.is_file():
            out.append(Input(path.relative_to(root).as_posix(), path.stat().st_size, _digest(path)))
    return out


def publish(cache: Path, store: Storage, items: list[Input], say=print) -> int:
    """Put the inputs of the local cache into the cache on storage, once: those there with the same
    digest are left. Returns how many were uploaded."""
    sent = 0
    for item in items:
        if (store.read_text(item.rel + DIGEST_SUFFIX) or "").split()[:1] == [item.sha256]:
            continue
        say(f"prepare: copying {item.rel} ({item.size / 2**20:.1f} MiB) to the cache {store.url}")
        store.upload(Path(cache) / item.rel, item.rel)
        store.write_text(item.rel + DIGEST_SUFFIX, f"{item.sha256} {item.size}\n")  # after the file: it vouches
        sent += 1
    return sent


def node_cache(url: str) -> Path:
    """This node's own copy of the cache at `url`."""
    from runner.store import node_dir

    return node_dir() / "cache" / hashlib.sha256(url.encode()).hexdigest()[:16]


def fetch(store: Storage, items: list[Input], local: Path) -> Path:
    """Bring the inputs from the cache on storage into this node's cache `local`, each checked against its
    digest; those already there and checked are kept. Returns `local`."""
    for item in items:
        target = local / item.rel
        if target.is_file() and target.stat().st_size == item.size and _digest(target) == item.sha256:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            store.download(item.rel, part)
            got = sha256_of(part)
            if got != item.sha256:
                raise UserError(
                    f"{store.path_url(item.rel)} does not match its digest (SHA-256 {got[:12]}..., expected "
                    f"{item.sha256[:12]}...): the cache on storage was changed or damaged. Fix: remove it there "
                    "and run again, so that the prepare step copies it anew."
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return local
