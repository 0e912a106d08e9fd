"""The driver's side of runner.train.catalog: the model libraries asked in a child process, the answers kept.

Answers live in the cache folder (`catalog/<library>-<key>.json`), keyed by the versions of the library's
distributions and by gridrun's code that builds zoo models: a second `validate` or `plan` imports no
framework and starts no process. A library that is not installed here is said once and skipped: its jobs
may still run in their framework's image. Nothing here imports a framework.
"""

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from schemas.registry import Parameters, Zoo, model_ref

ROOT = Path(__file__).resolve().parents[2]  # holds the runner and schemas packages
# gridrun's code behind an answer: a change to how a zoo model is built changes what the cache says of it.
CODE = (
    "runner/train/catalog.py",
    "runner/train/probe.py",
    "runner/train/torch_zoo.py",
    "runner/train/keras_zoo.py",
    "runner/train/tf_models.py",
    "schemas/registry.py",
)
PROBE_TIMEOUT_S = 900  # a cold import of torch or TensorFlow takes half a minute on a busy small machine
FETCH_TIMEOUT_S = 3600  # a large model's weights over a slow link


class Request(NamedTuple):
    """What a zoo model's facts depend on."""

    arch: str
    classes: int
    classifier_width: int | None
    frozen: bool
    image_size: int

    @property
    def key(self) -> str:
        return f"{self.arch}|{self.classes}|{self.classifier_width}|{self.frozen}|{self.image_size}"


@dataclass(frozen=True)
class Facts:
    """A zoo model with its new head, as its library built it (runner.train.catalog.facts)."""

    problem: str = ""  # '' when the spec builds; else the message, with the fix
    total: int | None = None
    trainable: int | None = None  # under freeze_backbone: the head's
    hidden_width: int | None = None  # None: no hidden dense layers, classifier_width does not apply
    min_image_size: int | None = None
    unchecked: str = ""  # the library failed to build it here (not the spec's fault): why; it is checked when it runs

    @property
    def parameters(self) -> Parameters | None:
        return None if self.total is None or self.trainable is None else Parameters(self.total, self.trainable)


@dataclass(frozen=True)
class Listing:
    """What a library offers by name."""

    zoo: Zoo
    names: list[str]
    imagenet: frozenset[str]  # the names with ImageNet (pretrained) weights
    tagged: list[str]  # timm: names with a pretrained tag, resnet50.a1_in1k


class ProbeFailed(Exception):
    """The child process could not answer (a broken install, a crash): the message says what it printed."""


@functools.cache
def _code_digest() -> str:
    h = hashlib.sha256()
    for rel in CODE:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return h.hexdigest()


def missing_packages(zoo: Zoo) -> list[str]:
    """The library's distributions not installed in this Python (read from package metadata, nothing imported)."""
    out = []
    for dist in zoo.packages:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this checkout first on its path, the frameworks' logging quiet."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **(extra or {})}


def ask(args: list[str], stdin: Any = None, env: dict[str, str] | None = None, timeout: float = PROBE_TIMEOUT_S) -> Any:
    """Run `python -m runner.train.catalog <args>` with this Python; its JSON answer."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runner.train.catalog", *args],
            input=None if stdin is None else json.dumps(stdin),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(env),
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"no answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
        raise ProbeFailed(last[0][:300])
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise ProbeFailed(f"an answer that is not JSON: {done.stdout[:200]!r}") from None


class Catalog:
    """The libraries' names and their models' facts, from the cache or from a child process."""

    def __init__(self, cache: Path, say: Callable[[str], None] = print) -> None:
        self.folder = Path(cache) / "catalog"
        self.say = say
        self._said: set[str] = set()
        self._files: dict[str, dict[str, Any]] = {}  # prefix -> its cache file's content
        self._paths: dict[str, Path] = {}
        self._lacking: dict[str, list[str]] = {}  # prefix -> its distributions not installed here

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(message)

    def usable(self, zoo: Zoo) -> bool:
        """Whether the library is installed here; if not, said once."""
        if zoo.prefix not in self._lacking:
            self._lacking[zoo.prefix] = missing_packages(zoo)
        lacking = self._lacking[zoo.prefix]
        if lacking:
            self._once(
                zoo.prefix,
                f"{zoo.display} is not installed here ({', '.join(lacking)} missing from {sys.prefix}): "
                f"{zoo.prefix}.<name> models are not checked before their jobs run and their parameters are not "
                f"counted; their jobs may still run in the {zoo.framework} image. Fix: pip install "
                f"'gridrun[{zoo.framework}]' to check them here",
            )
        return not lacking

    def _path(self, zoo: Zoo) -> Path:
        if zoo.prefix not in self._paths:
            versions = {dist: metadata.version(dist) for dist in zoo.packages}
            key = hashlib.sha256(json.dumps([versions, _code_digest()]).encode()).hexdigest()[:16]
            self._paths[zoo.prefix] = self.folder / f"{zoo.prefix}-{key}.json"
        return self._paths[zoo.prefix]

    def _file(self, zoo: Zoo) -> dict[str, Any]:
        if zoo.prefix not in self._files:
            try:
                content = json.loads(self._path(zoo).read_text())
            except (OSError, ValueError):  # absent, or damaged: asked again
                content = {}
            self._files[zoo.prefix] = content if isinstance(content, dict) else {}
        return self._files[zoo.prefix]

    def _save(self, zoo: Zoo) -> None:
        """Atomically (another gridrun may read it at the same time); a cache that cannot be written is skipped."""
        path = self._path(zoo)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self._files[zoo.prefix], f)
            os.replace(tmp, path)
        except OSError as e:
            self._once(f"save:{path}", f"the model catalog is not kept in {path.parent} ({e.strerror})")

    def _failed(self, zoo: Zoo, e: ProbeFailed) -> None:
        self._once(
            zoo.prefix,
            f"{zoo.display} could not be asked for its models ({e}): {zoo.prefix}.<name> models are not checked "
            "before their jobs run",
        )

    def _facts(self, zoo: Zoo) -> dict[str, Any]:
        return self._file(zoo).setdefault("facts", {})

    def ask(self, zoos: Iterable[Zoo] = (), requests: Iterable[Request] = ()) -> None:
        """Put in the cache what it lacks of the names of `zoos` and the facts of `requests`: one child process
        per framework (TensorFlow and torchvision cannot share one), none when the cache has it all."""
        names: dict[str, list[Zoo]] = {}  # framework -> libraries whose names it lacks
        facts: dict[str, list[Request]] = {}
        for zoo in dict.fromkeys(zoos):
            if self.usable(zoo) and "names" not in self._file(zoo):
                names.setdefault(zoo.framework, []).append(zoo)
        for request in dict.fromkeys(requests):
            zoo = _zoo(request)
            if self.usable(zoo) and request.key not in self._facts(zoo):
                facts.setdefault(zoo.framework, []).append(request)
        for framework in dict.fromkeys([*names, *facts]):
            libraries, asked = names.get(framework, []), facts.get(framework, [])
            involved = {z.prefix: z for z in [*libraries, *map(_zoo, asked)]}
            question = {"names": [z.prefix for z in libraries], "facts": [r._asdict() for r in asked]}
            try:
                answer = ask(["ask"], stdin=question)
            except ProbeFailed as e:
                for zoo in involved.values():
                    self._failed(zoo, e)
                continue
            for zoo in libraries:
                self._file(zoo).update(answer["names"][zoo.prefix])
            for request, found in zip(asked, answer["facts"], strict=True):
                self._facts(_zoo(request))[request.key] = found
            for zoo in involved.values():
                self._save(zoo)

    def has_names(self, zoo: Zoo) -> bool:
        """Whether the cache holds the library's names (or it is not installed: there is nothing to ask)."""
        return not self.usable(zoo) or "names" in self._file(zoo)

    def listing(self, zoo: Zoo) -> Listing | None:
        """The library's names; None when it is not installed here or could not be asked (said once)."""
        self.ask([zoo])
        content = self._file(zoo) if self.usable(zoo) else {}
        if "names" not in content:
            return None
        return Listing(zoo, content["names"], frozenset(content["imagenet"]), content["tagged"])

    def facts(self, requests: Iterable[Request]) -> dict[Request, Facts]:
        """Each zoo model's facts; those of a library not installed or not answering are left out."""
        requests = list(dict.fromkeys(requests))
        self.ask(requests=requests)
        out: dict[Request, Facts] = {}
        for request in requests:
            zoo = _zoo(request)
            known = self._facts(zoo).get(request.key) if self.usable(zoo) else None
            if known is None:
                continue
            found = Facts(**known)
            if found.unchecked:
                self._once(
                    f"unchecked:{request.arch}",
                    f"{request.arch} could not be built here to check it ({found.unchecked}): its job will tell",
                )
            out[request] = found
        return out


def _zoo(request: Request) -> Zoo:
    zoo = model_ref(request.arch).zoo
    assert zoo is not None
    return zoo


def library_caches(cache: Path) -> dict[str, str]:
    """The libraries' own download caches, pointed into gridrun's: torch hub, Hugging Face (timm), Keras."""
    root = Path(cache).resolve()
    return {"TORCH_HOME": str(root / "torch"), "HF_HOME": str(root / "huggingface"), "KERAS_HOME": str(root / "keras")}


def fetch_weights(arch: str, path: Path, cache: Path) -> str:
    """Have the library download its ImageNet weights of `arch` and save them at `path`: '' when done, else why
    not (offline, a library not installed here, no such weights)."""
    zoo = model_ref(arch).zoo
    assert zoo is not None
    lacking = missing_packages(zoo)
    if lacking:
        return f"{zoo.display} is not installed here to download them ({', '.join(lacking)} missing)"
    try:
        answer = ask(["fetch", arch, str(path)], env=library_caches(cache), timeout=FETCH_TIMEOUT_S)
    except ProbeFailed as e:
        return str(e)
    return answer.get("problem", "")


__all__ = ["Catalog", "Facts", "Listing", "Request", "fetch_weights", "missing_packages"]
