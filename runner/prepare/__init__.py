"""The prepare step: every dataset and pretrained weights file a suite needs, fetched once into
the shared cache before anything is scheduled. Jobs then read only from the cache.

Where the real input cannot be had, a substitute the suite declared (dataset.fallback,
model.weights_fallback) stands in, announced and recorded; without one the job fails with a
message naming the file to provide and where.
"""

import contextlib
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UserError
from runner.execute import Choice, choose
from runner.prepare import inputs
from runner.store import Storage
from runner.train import data, probe, weights
from schemas import JobSpec, Substitution
from schemas.registry import Dataset, model_ref

DOWNLOAD_TIMEOUT_S = 30


def default_cache() -> Path:
    """Per-user cache: $GRIDRUN_CACHE, else $XDG_CACHE_HOME/gridrun, else ~/.cache/gridrun."""
    if os.environ.get("GRIDRUN_CACHE"):
        return Path(os.environ["GRIDRUN_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gridrun"


@dataclass
class Prepared:
    """A job ready to schedule: the spec it runs with and what stood in; or why it cannot run."""

    declared: JobSpec  # as the suite says, before substitutes
    spec: JobSpec
    substitutions: list[Substitution] = field(default_factory=list)
    missing: str = ""  # non-empty: the real input is missing and no substitute was declared
    executor: Choice | None = None  # set once its image is built (a run); a plan chooses without building


@dataclass(frozen=True)
class Cache:
    """Where inputs are: `local`, the folder the prepare step fills, and, with a cache URL, `remote`, where
    every node fetches them from (into its own cache)."""

    local: Path
    remote: Storage | None = None

    @classmethod
    def open(cls, where: str | None) -> "Cache":
        """The cache at `where` (a path, or a URL whose local staging folder is the default cache)."""
        if where is None:
            return cls(default_cache())
        storage = Storage.open(where, create=True)
        if storage.local is not None:
            storage.check(writable=False)  # a file is refused; a read-only folder filled beforehand may do
            return cls(storage.local)
        storage.check()
        return cls(default_cache(), storage)

    @property
    def url(self) -> str:
        """What a job's task is told: the URL, or the local folder (which every node must see)."""
        return self.remote.url if self.remote is not None else str(self.local.resolve())

    def publish(self, prepared: list[Prepared], say: Callable[[str], None] = print) -> None:
        """With a cache URL: put every input the jobs read there, once."""
        if self.remote is None:
            return
        seen: dict[str, inputs.Input] = {}
        for p in prepared:
            if not p.missing:
                for item in inputs.of_job(p.spec, self.local):
                    seen[item.rel] = item
        inputs.publish(self.local, self.remote, list(seen.values()), say=say)


def build_images(prepared: list[Prepared], executor: str | None, say: Callable[[str], None] = print) -> None:
    """Choose each job's executor, building a framework image that is missing or out of date (a run only)."""
    for p in prepared:
        p.executor = choose(executor or p.declared.executor, p.spec, build=True, say=say)


class Preparer:
    """Fetches inputs once per suite (memoised), so jobs sharing a dataset share one download."""

    def __init__(self, cache: Path, download: bool = True, say: Callable[[str], None] = print) -> None:
        self.cache = Path(cache)
        self.download = download
        self.say = say
        self._fetched: dict[str, str] = {}  # key -> "" when available, else the reason it is not
        self._announced: set[str] = set()

    def prepare(self, spec: JobSpec) -> Prepared:
        out = Prepared(declared=spec, spec=spec.model_copy(deep=True))
        self._dataset(out)
        if not out.missing:
            self._weights(out)
        return out

    def _announce(self, what: str, reason: str) -> None:
        """Say each substitution; a reason already given in full is not repeated."""
        if reason in self._announced:
            self.say(f"{what} (as above)")
        else:
            self._announced.add(reason)
            self.say(f"{what} ({reason})")

    def _dataset(self, out: Prepared) -> None:
        ds = out.spec.dataset
        problem = self._ensure_dataset(ds)
        if not problem:
            return
        if ds.fallback is None:
            out.missing = problem
            return
        sub = Substitution(kind="dataset", wanted=ds.name, used=ds.fallback, reason=problem)
        self._announce(f"SUBSTITUTE job {out.spec.name}: dataset {ds.fallback} stands in for {ds.name}", problem)
        # A substitute has none of what belongs to the dataset it stands in for: its folder, its sets of labels.
        out.spec.dataset = ds.model_copy(update={"name": ds.fallback, "fallback": None, "path": None, "labels": None})
        out.substitutions.append(sub)

    def _weights(self, out: Prepared) -> None:
        model = out.spec.model
        if model.weights == "none":
            return
        try:
            problem = self._ensure_weights(out.spec)
        except UserError as e:
            out.missing = str(e)
            return
        if not problem:
            return
        if model.weights_fallback is None:
            out.missing = problem
            return
        self._announce(f"SUBSTITUTE job {out.spec.name}: random initial weights stand in for {model.weights}", problem)
        out.substitutions.append(Substitution(kind="weights", wanted=model.weights, used="none", reason=problem))
        out.spec.model = model.model_copy(update={"weights": "none", "weights_fallback": None})

    def _ensure_dataset(self, ds) -> str:
        """'' when the dataset can be loaded offline, else the reason it cannot."""
        missing = data.missing_files(ds, self.cache)
        if not missing:
            return ""
        declared = ds.declared
        if declared.download is None:
            return f"{missing[0]} does not exist; fix: create it or point dataset.path at it"
        root = data.download_root(ds, self.cache)
        key = f"{ds.name}:{root}"
        if key not in self._fetched:
            self._fetched[key] = self._fetch(declared, root)
        return self._fetched[key]

    def _fetch(self, declared: Dataset, root: Path) -> str:
        """Download and extract a dataset's archive into `root`: '' when done, else why it could not be."""
        download = declared.download
        assert download is not None
        try:
            if not self.download:  # `gridrun plan`: say what `run` would do, without the download
                _reachable(download.url)
                return ""
            self.say(f"prepare: downloading {declared.shown} into {root}")
            archive = _download(download.url, root / download.url.rsplit("/", 1)[-1], md5=download.md5)
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
            archive.unlink()
        except (OSError, ValueError, tarfile.TarError) as e:
            return (
                f"{declared.shown} is not in {root / download.folder} and could not be downloaded ({_short(e)}); "
                f"fix: extract {download.url} into {root}"
            )
        return ""

    def _ensure_weights(self, spec: JobSpec) -> str:
        path = weights.weights_file(spec, self.cache)
        assert path is not None
        if path.is_file():
            return ""
        if spec.model.weights != "imagenet":
            return f"weights file {path} does not exist; fix: provide it there or change model.weights"
        if not spec.model.twin:
            return self._zoo_weights(spec, path)
        source = weights.imagenet_source(spec.framework, spec.model.arch)
        key = f"weights:{path}"
        if key not in self._fetched:
            try:
                if self.download:
                    self.say(f"prepare: downloading {spec.framework} {spec.model.arch} ImageNet weights into {path}")
                    _download(source.url, path, md5=source.md5, sha256_prefix=source.sha256_prefix)
                else:  # `gridrun plan`: say what `run` would do, without the download
                    _reachable(source.url)
                self._fetched[key] = ""
            except (OSError, ValueError) as e:
                self._fetched[key] = (
                    f"ImageNet weights {path} are not in the cache and could not be downloaded "
                    f"({_short(e)}); fix: download {source.url} to {path}"
                )
        return self._fetched[key]

    def _zoo_weights(self, spec: JobSpec, path: Path) -> str:
        """A zoo model's ImageNet weights: its library downloads them (into its own cache, pointed into
        gridrun's) and they are saved at `path`, in a child process: the driver imports no framework."""
        arch = spec.model.arch
        zoo = model_ref(arch).zoo
        assert zoo is not None
        key = f"weights:{path}"
        if key not in self._fetched:
            if self.download:
                self.say(f"prepare: downloading {zoo.display}'s ImageNet weights of {arch} into {path}")
                problem = probe.fetch_weights(arch, path, self.cache)
            else:  # `gridrun plan`: say what `run` would do, without the download
                try:
                    _answers(zoo.weights_host)
                    problem = ""
                except OSError as e:
                    problem = f"{zoo.weights_host} does not answer: {_short(e)}"
            self._fetched[key] = weights.zoo_weights_missing(arch, path, problem) if problem else ""
        return self._fetched[key]


def _short(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e).splitlines()[0][:160]


def _reachable(url: str) -> None:
    """Raise OSError when a download would fail to start (for a plan, which downloads nothing)."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=DOWNLOAD_TIMEOUT_S):
        pass


def _answers(url: str) -> None:
    """Raise OSError when the server of `url` cannot be reached; any HTTP answer, an error too, means it can."""
    with contextlib.suppress(urllib.error.HTTPError):
        _reachable(url)


def _download(url: str, dest: Path, md5: str = "", sha256_prefix: str = "") -> Path:
    """Download to a temp file beside `dest`, verify its checksum, then rename into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h_md5, h_sha = hashlib.md5(), hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                h_md5.update(chunk)
                h_sha.update(chunk)
        if md5 and h_md5.hexdigest() != md5:
            raise ValueError(f"checksum mismatch for {url}: md5 {h_md5.hexdigest()}, expected {md5}")
        if sha256_prefix and not h_sha.hexdigest().startswith(sha256_prefix):
            raise ValueError(f"checksum mismatch for {url}: sha256 does not start with {sha256_prefix}")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)
