"""Loading a suite file: safe YAML, defaults, matrix, profile, then JobSpec validation.

Only this module touches the raw mappings; everything after it gets typed JobSpecs. Every
problem becomes one UserError naming the file, the place and the fix.
"""

import copy
import difflib
import importlib.util
import itertools
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from runner.errors import UserError
from runner.suite import code as code_folder
from schemas import JobSpec, SearchSpec, Suite
from schemas.base import clip, excerpt

_TEMPLATE = re.compile(r"\{([A-Za-z0-9_.]+)\}")
# A key that a message may show as it is, without quotes.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]{1,40}")

# Limits of a suite file, each refused with one message while it is read. The study's suite is 3 kB,
# 150 values, 5 levels deep; a "billion laughs" file of 600 bytes expands to 10^9 values through aliases.
MAX_SUITE_BYTES = 1 << 20  # read at most this much (1 MiB), refused before parsing
MAX_YAML_NODES = 200_000  # values of the document, each alias counted as the copy it stands for
MAX_YAML_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_PROBLEMS = 20  # validation problems one message lists; the rest are counted
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A rule of suite files broken at a place in the file (YAML's mark)."""

    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only, no Python tags) that also refuses a key repeated in one mapping,
    and measures the document while it is composed, before anything is built from it: aliases expanded, it
    may hold at most MAX_YAML_NODES values and nest MAX_YAML_DEPTH deep. Each node is measured once and an
    alias adds the measure of its anchor, so a file that would expand to billions is refused after reading
    its few hundred bytes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # of the node being composed
        self._total = 0  # values so far, aliases expanded
        self._aliases = 0  # aliases met so far
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded

    def _count(self, n: int, mark: yaml.Mark, what: str) -> None:
        self._total += n
        if self._total <= MAX_YAML_NODES:
            return
        if not self._aliases:
            raise _Refused(
                mark, f"the file holds more than {MAX_YAML_NODES:,} values; a suite needs far fewer. Fix: split it"
            )
        raise _Refused(
            mark,
            f"{what} brings the file above {MAX_YAML_NODES:,} values once its aliases (*name) are expanded; "
            "a suite needs far fewer. Fix: write the values out, or use fewer aliases",
        )

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is the composer's own error
                name = clip(event.anchor)
                measure = self._measured.get(id(node))
                if measure is None:
                    raise _Refused(
                        event.start_mark,
                        f"alias *{name} is inside the value it names (a value that contains itself). "
                        "Fix: point it at a value defined before, outside it",
                    )
                size, height = measure
                self._aliases += 1
                if self._depth + height > MAX_YAML_DEPTH:
                    raise _Refused(
                        event.start_mark,
                        f"alias *{name} nests the file deeper than {MAX_YAML_DEPTH} levels. Fix: flatten it",
                    )
                self._count(size, event.start_mark, f"alias *{name}")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(
                self.peek_event().start_mark,
                f"mappings and lists nest deeper than {MAX_YAML_DEPTH} levels; a suite needs 6 or so. Fix: flatten it",
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        measures = [self._measured[id(child)] for child in children]
        self._measured[id(node)] = (1 + sum(m[0] for m in measures), 1 + max((m[1] for m in measures), default=0))
        self._count(1, node.start_mark, "this value")
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Before merge keys (<<) are flattened in: a key given here may override a merged one.
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise _Refused(
                    key_node.start_mark,
                    f"key {excerpt(key_node.value)} repeats the key of line {first[key].start_mark.line + 1} "
                    "in the same mapping, and YAML would silently keep only the last. Fix: keep one of them",
                )
            first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def with_values(spec: JobSpec, values: dict[str, Any], name: str) -> JobSpec:
    """`spec` with each dotted field set to its value and named `name`, validated as a whole job."""
    raw = spec.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(raw, key, value)
    raw["name"] = name
    return JobSpec.model_validate(raw)


@dataclass(frozen=True)
class ResolvedSearch:
    """A suite's search with its base resolved: the job every trial starts from, as declared."""

    spec: SearchSpec
    base: JobSpec  # defaults, the base job (if any) and the profile; named after the search
    profile: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    def trial_name(self, number: int) -> str:
        """<search>-<number>, the number padded to the width of the last one: small-dense-07 of 16."""
        return f"{self.name}-{number:0{len(str(self.spec.trials))}d}"

    def trial(self, base: JobSpec, number: int, values: dict[str, Any]) -> JobSpec:
        """Trial `number`: `base` (as declared, or as run with its substitutes) with the values drawn for it."""
        return with_values(base, values, self.trial_name(number))


@dataclass(frozen=True)
class LoadedSuite:
    """A parsed, validated suite file."""

    path: Path
    text: str
    suite: Suite
    code: Path | None = None  # the suite's code: folder, resolved and checked; None when it names none

    @property
    def name(self) -> str:
        return self.suite.suite

    def code_files(self) -> list[tuple[str, Path]]:
        """The files of the code: folder, sorted by relative path (none without one)."""
        return code_folder.files(self.code) if self.code is not None else []

    def jobs(self, profile: str | None = None) -> list[JobSpec]:
        """Every job of the suite, with defaults, matrix and the profile applied, validated."""
        if profile is not None and profile not in self.suite.profiles:
            known = ", ".join(sorted(self.suite.profiles)) or "none"
            raise UserError(f"{self.path}: no profile {excerpt(profile)} (profiles: {known}). Fix: pick one of those.")
        overrides = self.suite.profiles.get(profile, {}) if profile else {}
        specs: list[JobSpec] = []
        where_by_name: dict[str, str] = {}
        for where, raw in self._entries():
            merged = _merge(_merge(copy.deepcopy(self.suite.defaults), raw), overrides)
            spec = self._validate_job(where, merged, profile)
            for field, ref in spec.code_refs():
                problem = code_folder.module_problem(self.code, field, ref)
                if problem:
                    raise UserError(f"{self.path}: {where} {excerpt(spec.name)}: {problem}.")
            if spec.name in where_by_name:
                raise UserError(
                    f"{self.path}: {where_by_name[spec.name]} and {where} are both named {spec.name!r}. "
                    "Fix: give each job a unique name."
                )
            where_by_name[spec.name] = where
            specs.append(self._resolve_paths(spec))
        return specs

    def _entries(self) -> list[tuple[str, dict[str, Any]]]:
        entries = [(f"jobs[{i}]", raw) for i, raw in enumerate(self.suite.jobs)]
        return entries + _matrix_entries(self.suite)

    def search(self, profile: str | None = None) -> ResolvedSearch | None:
        """The suite's search with its base job resolved under `profile` and every value of its space checked
        against that job; None when the suite has none."""
        search = self.suite.search
        if search is None:
            return None
        jobs = self.jobs(profile)
        names = [spec.name for spec in jobs]
        trial = re.compile(re.escape(search.name) + r"-\d+")
        clash = [n for n in names if n == search.name or trial.fullmatch(n)]
        if clash:
            raise UserError(
                f"{self.path}: search.name {search.name!r} would name its folder or trials like the job "
                f"{clash[0]!r}. Fix: give the search another name."
            )
        overrides = self.suite.profiles.get(profile, {}) if profile else {}
        raw: dict[str, Any] = {}
        if search.base is not None:
            found = [r for (_, r), spec in zip(self._entries(), jobs, strict=True) if spec.name == search.base]
            if not found:
                close = difflib.get_close_matches(search.base, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"the jobs are {', '.join(names) or 'none'}"
                raise UserError(
                    f"{self.path}: search.base {excerpt(search.base)} names no job of the suite; {hint}. "
                    "Fix: name one of the suite's jobs, or leave base out to start from the defaults."
                )
            raw = found[0]
        merged = _merge(_merge(copy.deepcopy(self.suite.defaults), raw), overrides)
        merged["name"] = search.name
        origin = f"job {search.base!r}" if search.base else "the defaults"
        where = f"search {search.name!r} (its base: {origin})"
        base = self._validate_job(where, merged, profile)
        if base.resources.nodes > 1:
            raise UserError(
                f"{self.path}: {where}: resources.nodes is {base.resources.nodes}, but a search's trials train on one "
                "node each (Ray Tune runs a trial in one task). Fix: resources.nodes: 1 in the search's base; "
                "replicas on one node (resources.gpus or resources.replicas) are allowed."
            )
        for field, ref in base.code_refs():
            problem = code_folder.module_problem(self.code, field, ref)
            if problem:
                raise UserError(f"{self.path}: {where}: {problem}.")
        resolved = ResolvedSearch(search, self._resolve_paths(base), profile)
        self._check_space(resolved, origin)
        return resolved

    def _check_space(self, search: ResolvedSearch, origin: str) -> None:
        """Every value (each bound of a range) with the base's other fields: a value valid for its field alone may
        still make no valid job (a width for an arch without hidden layers)."""
        spec = search.spec
        for key, dim in spec.space.items():
            for value in dim.probes:
                try:
                    with_values(search.base, {key: value}, search.trial_name(1))
                except ValidationError as e:
                    where = f"search {spec.name!r} (its base: {origin}) with {key} = {excerpt(value)}"
                    text = _format_errors(self.path, where, e, JobSpec)
                    raise UserError(f"{text}\nFix: change search.space.{key}, or the base job.") from None
        epochs = search.base.train.epochs
        if spec.scheduler.name == "asha" and spec.scheduler.grace >= epochs:
            raise UserError(
                f"{self.path}: search.scheduler.grace_epochs {spec.scheduler.grace} is not below the trials' "
                f"train.epochs ({epochs}, from {origin}): asha could stop no trial. "
                "Fix: lower grace_epochs, raise train.epochs, or use scheduler: fifo."
            )
        if spec.searcher == "optuna" and importlib.util.find_spec("optuna") is None:
            raise UserError(
                f"{self.path}: search.searcher optuna needs the optuna package, which is not installed. "
                "Fix: pip install 'gridrun[search]', or use searcher: random."
            )

    def _validate_job(self, where: str, merged: dict[str, Any], profile: str | None) -> JobSpec:
        name = merged.get("name", "?")
        try:
            return JobSpec.model_validate(merged)
        except ValidationError as e:
            after = " (after defaults" + (f" and profile {profile!r})" if profile else ")")
            raise UserError(_format_errors(self.path, f"{where} {excerpt(name)}{after}", e, JobSpec)) from None

    def _resolve_paths(self, spec: JobSpec) -> JobSpec:
        """Relative data and weights paths are relative to the suite file's folder."""
        base = self.path.parent
        if spec.model.weights not in ("none", "imagenet") and not Path(spec.model.weights).expanduser().is_absolute():
            spec = spec.model_copy(deep=True)
            spec.model.weights = str((base / spec.model.weights).resolve())
        if spec.dataset.path and not Path(spec.dataset.path).expanduser().is_absolute():
            spec = spec.model_copy(deep=True)
            spec.dataset.path = str((base / spec.dataset.path).resolve())
        return spec


def load_suite(path: Path | str) -> LoadedSuite:
    """Read and validate a suite file; every job is validated under every profile."""
    path = Path(path)
    if not path.is_file():
        hint = "" if path.suffix in (".yaml", ".yml") else " (a .yaml file)"
        if path.exists():
            raise UserError(
                f"{path} is not a regular file. Fix: give the path of a suite file{hint}, e.g. jobs/smoke.yaml."
            )
        raise UserError(f"suite file {path} not found. Fix: give the path of a suite file{hint}, e.g. jobs/smoke.yaml.")
    text = _read_text(path)
    raw = _parse_yaml(path, text)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        raise UserError(_format_errors(path, "suite", e, Suite)) from None
    code = code_folder.resolve(path, suite.code) if suite.code is not None else None
    loaded = LoadedSuite(path=path, text=text, suite=suite, code=code)
    for profile in [None, *suite.profiles]:
        loaded.jobs(profile)
        loaded.search(profile)
    return loaded


def _read_text(path: Path) -> str:
    """The file as text, read with a bounded read: a huge file (or one that keeps growing) is never held whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SUITE_BYTES + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e}). Fix: give a readable UTF-8 YAML file.") from None
    if len(data) > MAX_SUITE_BYTES:
        raise UserError(
            f"{path} is larger than {MAX_SUITE_BYTES >> 20} MiB, far more than a suite needs (the study's is 3 kB). "
            "Fix: give the suite file itself, or split the study into several suites."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: cannot be read ({e}). Fix: give a readable UTF-8 YAML file.") from None


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    if not text.strip():
        raise UserError(f"{path} is empty. Fix: write a suite: a 'suite' name and a 'jobs' list (see jobs/smoke.yaml).")
    try:
        raw = yaml.load(text, Loader=_SuiteLoader)  # a SafeLoader: plain data only
    except _Refused as e:
        where = f"{path}:{e.mark.line + 1}" if e.mark else str(path)
        raise UserError(f"{where}: {e.message}.") from None
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        tag = re.search(r"tag '([^']+)'", str(e.problem))
        raise UserError(
            f"{where}: the YAML tag {clip(tag.group(1)) if tag else ''} is not allowed; suite files are "
            "plain YAML (no Python objects). Fix: remove the tag."
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = _clip(getattr(e, "problem", None) or str(e))
        raise UserError(f"{where}: malformed YAML: {problem}. Fix: correct the syntax at that line.") from None
    if raw is None:
        raise UserError(f"{path} holds no YAML content. Fix: write a 'suite' name and a 'jobs' list.")
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: the top level is a {type(raw).__name__}, not a mapping. "
            "Fix: start with 'suite: <name>' and a 'jobs:' list."
        )
    return raw


def _merge(base: dict[str, Any], override: Any) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    if not isinstance(override, dict):
        return override
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def _matrix_entries(suite: Suite) -> list[tuple[str, dict[str, Any]]]:
    matrix = suite.matrix
    if matrix is None:
        return []
    keys = list(matrix.axes)
    entries = []
    for values in itertools.product(*(matrix.axes[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        if any(all(combo.get(k) == v for k, v in ex.items()) for ex in matrix.exclude):
            continue
        job = copy.deepcopy(matrix.job)
        for key, value in combo.items():
            _set_dotted(job, key, value)
        job["name"] = _render_name(matrix.name, combo)
        entries.append((f"matrix {excerpt(combo, 120)}", job))
    return entries


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _render_name(template: str, combo: dict[str, Any]) -> str:
    short = {k.rsplit(".", 1)[-1]: v for k, v in combo.items()}

    def value(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in combo:
            return str(combo[key])
        if key in short:
            return str(short[key])
        raise UserError(
            f"matrix name template {excerpt(template)} names {{{clip(key)}}}, which is not an axis "
            f"(axes: {', '.join(clip(k) for k in combo)}). Fix: use an axis name."
        )

    return _TEMPLATE.sub(value, template)


def _format_errors(path: Path, where: str, error: ValidationError, model: type[BaseModel]) -> str:
    """One message for all of pydantic's complaints, each with its place and fix."""
    lines = []
    items = error.errors()
    for item in items[:MAX_PROBLEMS]:
        loc = ".".join(_place(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            field = str(item["loc"][-1])
            known = _fields_at(model, item["loc"][:-1])
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{loc}: unknown key {excerpt(field)}; {hint}")
        elif kind == "missing":
            lines.append(f"{loc}: required but missing. Fix: add it.")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            got = "" if kind.startswith("value_error") else f" (got {excerpt(item.get('input'))})"
            lines.append(f"{loc}: {msg}{got}")
    if len(items) > MAX_PROBLEMS:
        lines.append(f"... and {len(items) - MAX_PROBLEMS} more problem(s) of the same kind")
    head = f"{path}: {where} is invalid" + (":" if len(lines) > 1 else ": ")
    return head + ("\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0])


def _place(part: Any) -> str:
    """One part of an error's location: a key of the user's is cut short and its control characters escaped."""
    text = str(part)
    return text if isinstance(part, int) or _PLAIN_KEY.fullmatch(text) else clip(text, 40)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by walking `loc` from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as `X | None` or `list[X]`, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
    return annotation
