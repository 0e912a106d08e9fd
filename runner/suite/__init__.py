"""Loading a suite file: safe YAML, defaults, matrix, profile, then JobSpec validation.

Only this module touches the raw mappings; everything after it gets typed JobSpecs. Every
problem becomes one UserError naming the file, the place and the fix.
"""

import copy
import difflib
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
from schemas import JobSpec, Suite

_TEMPLATE = re.compile(r"\{([A-Za-z0-9_.]+)\}")


@dataclass(frozen=True)
class LoadedSuite:
    """A parsed, validated suite file."""

    path: Path
    text: str
    suite: Suite

    @property
    def name(self) -> str:
        return self.suite.suite

    def jobs(self, profile: str | None = None) -> list[JobSpec]:
        """Every job of the suite, with defaults, matrix and the profile applied, validated."""
        if profile is not None and profile not in self.suite.profiles:
            known = ", ".join(sorted(self.suite.profiles)) or "none"
            raise UserError(f"{self.path}: no profile {profile!r} (profiles: {known}). Fix: pick one of those.")
        entries = [(f"jobs[{i}]", raw) for i, raw in enumerate(self.suite.jobs)]
        entries += _matrix_entries(self.suite)
        overrides = self.suite.profiles.get(profile, {}) if profile else {}
        specs: list[JobSpec] = []
        where_by_name: dict[str, str] = {}
        for where, raw in entries:
            merged = _merge(_merge(copy.deepcopy(self.suite.defaults), raw), overrides)
            spec = self._validate_job(where, merged, profile)
            if spec.name in where_by_name:
                raise UserError(
                    f"{self.path}: {where_by_name[spec.name]} and {where} are both named {spec.name!r}. "
                    "Fix: give each job a unique name."
                )
            where_by_name[spec.name] = where
            specs.append(self._resolve_paths(spec))
        return specs

    def _validate_job(self, where: str, merged: dict[str, Any], profile: str | None) -> JobSpec:
        name = merged.get("name", "?")
        try:
            return JobSpec.model_validate(merged)
        except ValidationError as e:
            after = " (after defaults" + (f" and profile {profile!r})" if profile else ")")
            raise UserError(_format_errors(self.path, f"{where} {name!r}{after}", e, JobSpec)) from None

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
        raise UserError(f"suite file {path} not found. Fix: give the path of a suite file{hint}, e.g. jobs/smoke.yaml.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e}). Fix: give a readable UTF-8 YAML file.") from None
    raw = _parse_yaml(path, text)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        raise UserError(_format_errors(path, "suite", e, Suite)) from None
    loaded = LoadedSuite(path=path, text=text, suite=suite)
    for profile in [None, *suite.profiles]:
        loaded.jobs(profile)
    return loaded


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    if not text.strip():
        raise UserError(f"{path} is empty. Fix: write a suite: a 'suite' name and a 'jobs' list (see jobs/smoke.yaml).")
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        tag = re.search(r"tag '([^']+)'", str(e.problem))
        raise UserError(
            f"{where}: the YAML tag {tag.group(1) if tag else ''} is not allowed; suite files are plain YAML "
            "(no Python objects). Fix: remove the tag."
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
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
        entries.append((f"matrix {combo}", job))
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
            f"matrix name template {template!r} names {{{key}}}, which is not an axis "
            f"(axes: {', '.join(combo)}). Fix: use an axis name."
        )

    return _TEMPLATE.sub(value, template)


def _format_errors(path: Path, where: str, error: ValidationError, model: type[BaseModel]) -> str:
    """One message for all of pydantic's complaints, each with its place and fix."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            field = str(item["loc"][-1])
            known = _fields_at(model, item["loc"][:-1])
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{loc}: unknown key {field!r}; {hint}")
        elif kind == "missing":
            lines.append(f"{loc}: required but missing. Fix: add it.")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            got = "" if kind.startswith("value_error") else f" (got {item.get('input')!r})"
            lines.append(f"{loc}: {msg}{got}")
    head = f"{path}: {where} is invalid" + (":" if len(lines) > 1 else ": ")
    return head + ("\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0])


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
