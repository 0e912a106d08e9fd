"""A run's identity: what changes its result, in parts a later plan compares one by one.

    spec      the resolved spec
    code      the worker's own modules: what `python -m runner.train.worker` imports of gridrun
    versions  framework packages, numpy and python (process); the image's declared ones (docker)
    image     the image's id or digest (docker), '' for a local process
    user_code the suite's code: folder, each file's relative path and bytes, for a job that imports from it

Computed on the driver without importing a framework: versions come from package metadata.
"""

import ast
import functools
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.execute import Choice, images
from schemas import Identity, JobSpec, SpecFile
from schemas.registry import DATASETS, FRAMEWORKS

ROOT = Path(__file__).resolve().parents[2]  # holds the runner and schemas packages
PROJECT = ("runner", "schemas")
TRAIN = "runner/train"  # every trainer, model and loader: the registry loads them by name at run time
SHOWN = 3  # spec fields named in a 'spec changed' reason
CUT = 24  # characters of a value shown


def _file_of(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_of(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules a file names in an import anywhere (lazy ones too), with every package above them."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from runner.train import data` names a module; `from schemas import JobSpec` a name in one.
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    parts = [n.split(".") for n in names if n.split(".")[0] in PROJECT]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


def worker_files(root: Path = ROOT) -> list[str]:
    """The files the worker runs, relative to `root`, sorted: runner/train and every gridrun module it
    imports, followed import by import, and the modules the registry names for it to load."""
    named = [f.trainer for f in FRAMEWORKS.values()] + [f.models for f in FRAMEWORKS.values()]
    named += [d.loader.partition(":")[0] for d in DATASETS.values()]
    todo = {_module_of(p.relative_to(root)) for p in (root / TRAIN).rglob("*.py") if "__pycache__" not in p.parts}
    todo |= set(named)
    seen: set[str] = set()
    files: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        seen.add(module)
        path = _file_of(module, root)
        if path is None:  # a name inside a module, or a namespace package
            continue
        files[path.relative_to(root).as_posix()] = path
        todo |= _imports(path, module) - seen
    return sorted(files)


@functools.cache
def _code_hash(root: Path) -> str:
    return folder_hash([(rel, root / rel) for rel in worker_files(root)])


def code_hash(root: Path | None = None) -> str:
    """Hash of the path and bytes of every file the worker runs; once per process, the tree being fixed."""
    return _code_hash(root or ROOT)


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def runtime(framework: str, choice: Choice) -> tuple[dict[str, str], str]:
    """(versions, image) of a job run with `choice`. An image's id covers what is inside it, so only the
    versions its labels declare are added; a local process runs with the packages installed here."""
    if choice.image:
        image, versions = images.identity(choice.image)
        return versions, image
    packages = (*FRAMEWORKS[framework].packages, "numpy")
    versions = {p: v for p in packages if (v := _installed(p))}
    return {**versions, "python": platform.python_version()}, ""


def folder_hash(files: list[tuple[str, Path]]) -> str:
    """Hash of files given as (relative path, path): a change of any path or byte changes it."""
    h = hashlib.sha256()
    for rel, path in files:
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def identify(spec: JobSpec, versions: dict[str, str], image: str, user_code: str = "") -> Identity:
    """The identity of a run of `spec` with these versions and image, from the code of this tree; `user_code`,
    the hash of the suite's code: folder, counts for a job that imports from it only."""
    own = user_code if spec.code_refs() else ""
    return Identity(spec=spec.digest(), code=code_hash(), versions=versions, image=image, user_code=own)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.removesuffix("."): value}


_UNSET = object()


def _short(value: Any) -> str:
    text = "unset" if value is _UNSET else value if isinstance(value, str) and value else json.dumps(value)
    return text if len(text) <= CUT else text[: CUT - 1] + "…"


def spec_changes(old: JobSpec, new: JobSpec) -> str:
    """The fields that differ, by dotted key, old → new: at most SHOWN of them, then how many more."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _UNSET) != b.get(k, _UNSET))
    shown = [f"{k} {_short(a.get(k, _UNSET))} → {_short(b.get(k, _UNSET))}" for k in keys[:SHOWN]]
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(shown) + more


def changes(old: SpecFile | None, new: Identity, spec: JobSpec) -> str:
    """Why a recorded run no longer stands for this one, part by part, in words."""
    if old is None:
        return "spec changed"
    was = old.identity
    reasons = []
    if (was.spec != new.spec) if was else (old.spec != spec):
        diff = spec_changes(old.spec, spec)
        reasons.append(f"spec changed: {diff}" if diff else "spec changed")
    if was is None:
        return "; ".join(reasons) or "no identity recorded with this result (an older gridrun's)"
    if was.code != new.code:
        reasons.append("trainer code changed since this result")
    if was.user_code and new.user_code and was.user_code != new.user_code:  # else the spec's change says it
        reasons.append("a file of your code: folder changed since this result")
    if was.image != new.image:
        reasons.append("image changed")  # the versions inside it changed with it, if any did
    else:
        for p in sorted(was.versions.keys() | new.versions.keys()):
            before, after = was.versions.get(p, "none"), new.versions.get(p, "none")
            if before != after:
                reasons.append(f"{p} {before} → {after}")
    return "; ".join(reasons) or "identity changed"
