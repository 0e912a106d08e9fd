"""A suite file: defaults, profiles, jobs, an optional matrix and an optional search.

Jobs, defaults and profiles are partial job specs (plain mappings); they are merged and then
validated as JobSpec by runner.suite, which knows where each value came from.
"""

import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from schemas.base import PlainText, SafeName, Strict, excerpt
from schemas.search import SearchSpec

# Jobs one suite may hold, its list and its matrix together: the matrix is counted before it is expanded.
MAX_JOBS = 10_000


class MatrixSpec(Strict):
    """A cartesian product of values, each combination one job."""

    name: str = Field(
        description="Job name template; {key} is the value of an axis, named by its full dotted key or last part."
    )
    axes: dict[str, list[Any]] = Field(
        description="Dotted job field -> list of values, e.g. model.arch: [alexnet, vgg16]."
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="Combinations to leave out: each entry matches by axis values."
    )
    job: dict[str, Any] = Field(default_factory=dict, description="Fields shared by every job of the matrix.")

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not axes:
            raise ValueError("a matrix needs at least one axis")
        for key, values in axes.items():
            if not values:
                raise ValueError(f"axis {excerpt(key)} has no values")
        size = math.prod(len(values) for values in axes.values())
        if size > MAX_JOBS:
            sizes = " x ".join(str(len(values)) for values in axes.values())
            raise ValueError(
                f"the matrix makes {sizes} = {size:,} jobs before its excludes, more than the {MAX_JOBS:,} one suite "
                "may hold. Fix: use fewer values per axis, or split the study into several suites"
            )
        return axes

    @property
    def size(self) -> int:
        """Jobs the matrix makes before its excludes: the product of the axes' lengths, nothing expanded."""
        return math.prod(len(values) for values in self.axes.values())

    @model_validator(mode="after")
    def _excludes_name_axes(self) -> "MatrixSpec":
        for entry in self.exclude:
            unknown = set(entry) - set(self.axes)
            if unknown:
                raise ValueError(
                    f"exclude names {excerpt(sorted(unknown))}, which are not axes; "
                    f"the axes are {excerpt(sorted(self.axes), 200)}"
                )
        return self


class Suite(Strict):
    """A named set of jobs that run and are reported together."""

    suite: SafeName = Field(description="Suite name; also its folder name under the results root.")
    description: str = Field("", description="What the suite studies.")
    code: PlainText | None = Field(
        None,
        description="Folder of your own Python code, relative to the suite file: model.arch and dataset.name may "
        "name <module>:<function> of its modules. It is on every job's import path (mounted read-only in a "
        "container, sent with `gridrun submit`), and its files are part of the identity of the jobs that use it.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Fields every job starts from.")
    profiles: dict[SafeName, dict[str, Any]] = Field(
        default_factory=dict, description="Named overrides applied on top of every job (e.g. cpu)."
    )
    cpu_profile: str | None = Field(
        None, description="Profile picked by itself, and announced, when the cluster has no GPU."
    )
    jobs: list[dict[str, Any]] = Field(default_factory=list, description="Jobs, each a partial job spec.")
    matrix: MatrixSpec | None = Field(None, description="Optional cartesian expansion into more jobs.")
    search: SearchSpec | None = Field(
        None, description="Optional search with Ray Tune: trials drawn from a space of job fields, early stopping."
    )

    @model_validator(mode="after")
    def _check(self) -> "Suite":
        if not self.jobs and self.matrix is None and self.search is None:
            raise ValueError("the suite has no jobs: add a 'jobs' list, a 'matrix' or a 'search'")
        if self.cpu_profile is not None and self.cpu_profile not in self.profiles:
            raise ValueError(
                f"cpu_profile {excerpt(self.cpu_profile)} is not among the profiles "
                f"{excerpt(sorted(self.profiles), 200)}"
            )
        count = len(self.jobs) + (self.matrix.size if self.matrix is not None else 0)
        if count > MAX_JOBS:
            made = f" ({len(self.jobs):,} in 'jobs', {self.matrix.size:,} from the matrix)" if self.matrix else ""
            raise ValueError(
                f"the suite makes {count:,} jobs{made}, more than the {MAX_JOBS:,} one suite may hold. "
                "Fix: split the study into several suites"
            )
        return self
