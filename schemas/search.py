"""A suite's `search`: a space of job fields that Ray Tune samples; each sample is a trial, run as a gridrun job.

    search:
      name: small-dense                 # trials are named small-dense-01, small-dense-02, ...
      base: alexnet-tf-scratch          # a job of the suite to start from (else the defaults)
      space:
        train.optimizer.lr: {loguniform: [1.0e-4, 3.0e-3]}
        model.classifier_width: {choice: [256, 512, 1024]}
      samples: 8
      metric: val_accuracy              # or {name: train_loss, mode: min}
      scheduler: {name: asha, grace_epochs: 2, reduction_factor: 3}

Each value of the space is checked against the job field it names, with that field's own type and bounds;
runner.suite checks it again with the whole job (the base's other fields) once the base is known.
"""

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from schemas.base import Problems, SafeName, Strict, excerpt
from schemas.job import JobSpec
from schemas.result import EpochRecord

# What each distribution draws, as the docs and messages say it.
DISTRIBUTIONS: dict[str, str] = {
    "uniform": "[low, high]: a number drawn evenly between them",
    "loguniform": "[low, high], both above 0: a number drawn evenly on a log scale (learning rates)",
    "randint": "[low, high]: a whole number between them, both included",
    "choice": "[a, b, ...]: one of the values, drawn at random",
    "grid": "[a, b, ...]: every value, each in `samples` trials",
}
RANGES = ("uniform", "loguniform", "randint")
MAX_TRIALS = 10_000
# Fields a trial may not vary: its name is the search's to give; the others decide what the prepare step
# downloads or builds and where Ray places the trial, which happens once, for the base, before the search.
FIXED = {
    "name": "each trial is named <search name>-<number>",
    "framework": "the framework decides the image and the inputs, prepared once before the search",
    "model.arch": "the architecture decides the weights to prepare, once before the search",
    "model.weights": "the weights are prepared once before the search",
    "model.weights_fallback": "the weights are prepared once before the search",
    "dataset.name": "the dataset is prepared once before the search",
    "dataset.path": "the dataset is prepared once before the search",
    "dataset.fallback": "the dataset is prepared once before the search",
    "executor": "every trial runs with the base's executor, chosen once before the search",
    "image": "every trial runs in the base's image, chosen once before the search",
    "resources": "Ray reserves every trial's resources before its values are drawn",
    "train.epochs": "asha compares trials at the same epochs, so every trial runs the base's train.epochs",
}
# Metrics a search can optimise: each epoch's, as the worker reports them. Lower is better for these.
METRICS = [name for name in EpochRecord.model_fields if name != "epoch"]
LOWER_IS_BETTER = ("train_loss", "epoch_seconds", "lr")


def job_field(dotted: str) -> FieldInfo:
    """The JobSpec field a dotted key names (model.classifier_width); ValueError saying why when it names none."""
    why = FIXED.get(dotted) or (FIXED["resources"] if dotted.split(".")[0] == "resources" else None)
    if why:
        raise ValueError(f"a search cannot vary {dotted}: {why}. Fix: set it in the base job or the defaults")
    model: type[BaseModel] = JobSpec
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        where = ".".join(parts[:i]) or "a job"
        if field is None:
            raise ValueError(
                f"{excerpt(dotted)} is not a job field: {where} has no {excerpt(part)} "
                f"(its fields: {', '.join(model.model_fields)}). Fix: name a field by its dotted key, "
                "e.g. train.optimizer.lr"
            )
        inner = _model_of(field.annotation)
        if i == len(parts) - 1:
            if inner is not None:
                raise ValueError(
                    f"{dotted} is a group of settings, not one value. Fix: name one of its fields "
                    f"({', '.join(f'{dotted}.{k}' for k in inner.model_fields)})"
                )
            return field
        if inner is None:
            raise ValueError(f"{excerpt(dotted)} is not a job field: {'.'.join(parts[: i + 1])} holds one value")
        model = inner
    raise AssertionError("unreachable")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def check_value(dotted: str, value: Any, what: str) -> Any:
    """`value` validated as the field `dotted` validates it (its type and bounds); ValueError naming both."""
    field = job_field(dotted)
    try:
        return TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
    except ValidationError as e:
        why = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ValueError(f"{what} {excerpt(value)} is not a valid {dotted}: {why}") from None


def _integral(dotted: str) -> bool:
    annotation = job_field(dotted).annotation
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return bool(args) and all(a is int for a in args)


class Dimension(Strict):
    """One axis of the space: a distribution and its values, written {loguniform: [1.0e-4, 1.0e-2]}."""

    kind: Literal["uniform", "loguniform", "randint", "choice", "grid"] = Field(description="The distribution.")
    values: list[Any] = Field(description="[low, high] for a range, the values for choice and grid.")

    @model_validator(mode="before")
    @classmethod
    def _one_distribution(cls, raw: Any) -> Any:
        if isinstance(raw, Dimension) or (isinstance(raw, dict) and set(raw) == {"kind", "values"}):
            return raw  # as dumped (search.json): checked when it was written
        known = ", ".join(DISTRIBUTIONS)
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(
                f"{excerpt(raw)} is not a distribution: write one of {known} with its values, "
                "e.g. {loguniform: [1.0e-4, 1.0e-2]} or {choice: [256, 512]}"
            )
        ((kind, values),) = raw.items()
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {excerpt(kind)}: use one of {known}")
        if not isinstance(values, list):
            raise ValueError(f"{kind} takes a list, {DISTRIBUTIONS[kind]}; got {excerpt(values)}")
        if kind in RANGES:
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(values) != 2 or len(numbers) != 2 or not all(math.isfinite(v) for v in numbers):
                raise ValueError(f"{kind} takes two finite numbers, {DISTRIBUTIONS[kind]}; got {excerpt(values)}")
            low, high = values
            if kind == "loguniform" and (low <= 0 or high <= 0):
                raise ValueError(
                    f"loguniform needs bounds above 0 (a log scale has no 0 or below); got {excerpt(values)}. "
                    "Fix: e.g. {loguniform: [1.0e-5, 1.0e-2]}, or uniform for a range that reaches 0"
                )
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ValueError(f"randint takes two whole numbers; got {excerpt(values)}. Fix: or use uniform")
            if not low < high:
                raise ValueError(f"{kind} needs low < high; got {excerpt(values)}")
        elif not values:
            raise ValueError(f"{kind} has no values: list at least one, e.g. {{{kind}: [256, 512]}}")
        elif any(isinstance(v, dict | list) for v in values):
            raise ValueError(f"{kind} takes plain values (numbers, text, true/false); got {excerpt(values)}")
        return {"kind": kind, "values": values}

    @property
    def probes(self) -> list[Any]:
        """The values that stand for the whole axis when it is checked: each listed value, or both bounds."""
        return list(self.values)

    def describe(self) -> str:
        if self.kind in RANGES:
            return f"{self.kind} [{self.values[0]:g}, {self.values[1]:g}]"
        return f"{self.kind} {', '.join(map(str, self.values))}"


class MetricSpec(Strict):
    """What the search optimises: one of each epoch's metrics, maximised or minimised."""

    name: Literal[tuple(METRICS)] = Field(  # type: ignore[valid-type]
        "val_accuracy", description=f"Each epoch's metric: {', '.join(METRICS)}."
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max or min; default: min for train_loss and epoch_seconds, max for the others."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw

    @property
    def direction(self) -> str:
        return self.mode or ("min" if self.name in LOWER_IS_BETTER else "max")

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is better than `b`."""
        return a < b if self.direction == "min" else a > b


class SchedulerSpec(Strict):
    """When to stop a trial: asha stops the worst early (at epochs grace, grace x factor, ...); fifo never does."""

    name: Literal["asha", "fifo"] = Field("asha", description="asha (early stopping) or fifo (every trial to the end).")
    grace_epochs: int | None = Field(
        None, ge=1, le=10_000, description="asha: epochs every trial runs before it can be stopped (default 1)."
    )
    reduction_factor: float | None = Field(
        None, ge=2, le=100, description="asha: keep the best 1/factor at each rung (default 3)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _asha_only(self) -> "SchedulerSpec":
        if self.name == "fifo" and (self.grace_epochs is not None or self.reduction_factor is not None):
            raise ValueError("grace_epochs and reduction_factor apply to asha; fifo runs every trial to its end")
        return self

    @property
    def grace(self) -> int:
        return self.grace_epochs or 1

    @property
    def factor(self) -> float:
        return self.reduction_factor or 3.0

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which asha compares trials, below the last one; none for fifo. As Ray Tune's ASHA places
        them: grace x factor^k, for as many rungs as fit below `epochs`, each reached at the first whole epoch."""
        if self.name != "asha" or self.grace >= epochs:
            return []
        count = int(math.log(epochs / self.grace) / math.log(self.factor) + 1)
        milestones = (self.grace * self.factor**k for k in range(count))
        return sorted({math.ceil(m) for m in milestones if m < epochs})

    def describe(self, epochs: int) -> str:
        if self.name == "fifo":
            return "fifo: every trial runs all its epochs"
        rungs = ", ".join(map(str, self.rungs(epochs))) or "none below the last epoch"
        return f"asha: grace {self.grace} epoch(s), keep the best 1/{self.factor:g} at epochs {rungs}"


class SearchSpec(Strict):
    """A search over job fields with Ray Tune: trials are jobs of the suite, in results/<suite>/<name>/."""

    name: SafeName = Field(description="The search's name: its folder, and its trials' names (<name>-<number>).")
    base: SafeName | None = Field(None, description="A job of the suite the trials start from; else the defaults.")
    description: str = Field("", description="What the search looks for.")
    space: dict[str, Dimension] = Field(description="Dotted job field -> distribution, e.g. train.optimizer.lr.")
    samples: int = Field(8, ge=1, le=MAX_TRIALS, description="Trials to draw (each grid combination this many).")
    metric: MetricSpec = Field(default_factory=MetricSpec, description="What is optimised, e.g. val_accuracy.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="asha (early stopping) or fifo.")
    searcher: Literal["random", "optuna"] = Field(
        "random", description="random, or optuna (TPE; needs `pip install 'gridrun[search]'`)."
    )
    max_concurrent: int | None = Field(
        None, ge=1, le=1024, description="Trials running at once; default: as many as the cluster holds."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the searcher: the same seed draws the same trials.")

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        if not space:
            raise ValueError("the search space is empty: name at least one job field, e.g. train.optimizer.lr")
        return space

    @model_validator(mode="after")
    def _fields_and_bounds(self) -> "SearchSpec":
        """Each key a job field, each value within that field's type and bounds: one error per key, at the key."""
        problems = Problems(self)
        for key, dim in self.space.items():
            try:
                if dim.kind != "randint" and dim.kind in RANGES and _integral(key):
                    raise ValueError(
                        f"{dim.kind} draws fractions and {key} takes whole numbers. Fix: use randint or choice"
                    )
                what = "bound" if dim.kind in RANGES else "value"
                for value in dim.probes:
                    check_value(key, value, f"{dim.kind} {what}")
            except ValueError as e:
                problems.add(("space", key), str(e), dim.values)
        problems.raise_any()
        return self

    @model_validator(mode="after")
    def _check(self) -> "SearchSpec":
        if self.trials > MAX_TRIALS:
            raise ValueError(
                f"the search makes {self.trials:,} trials ({self.samples} samples x {self.trials // self.samples} "
                f"grid combinations), more than {MAX_TRIALS:,}. Fix: fewer samples or grid values"
            )
        if self.searcher == "optuna" and any(d.kind == "grid" for d in self.space.values()):
            raise ValueError("searcher optuna does not take grid axes. Fix: use choice, or searcher: random")
        return self

    @property
    def trials(self) -> int:
        """How many trials the search runs: samples, times the size of the grid."""
        return self.samples * math.prod(len(d.values) for d in self.space.values() if d.kind == "grid")
