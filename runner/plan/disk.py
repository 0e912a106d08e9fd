"""How much disk a plan's checkpoints take, against what the results disk has free.

A checkpoint is float32: `last` holds every parameter plus the optimizer's state for each trainable
one (Adam keeps two slots, SGD with momentum one), `best` the parameters alone; while `last` is
rewritten its old copy still exists. The counts come from runner.plan.models: a twin's by its
declaration's arithmetic, a zoo model's from its library (asked in a child process): no framework is
imported to size a plan.
"""

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.plan.models import arithmetic
from schemas import JobSpec
from schemas.registry import Parameters

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Need:
    """The disk one job's checkpoints take at most."""

    job: str
    last: int
    best: int

    @property
    def total(self) -> int:
        return self.last + self.best


def need(spec: JobSpec, counted: Parameters | None = None) -> Need | None:
    """The checkpoint bytes of one job (upper bound: BatchNorm buffers and metadata are left out), from its
    parameter counts (a twin's by default); None when it has none: a zoo model whose library is not installed
    here, a user's model, a dataset of the user's function."""
    counted = counted or arithmetic(spec)
    if counted is None:
        return None
    total, trainable = counted
    opt = spec.train.optimizer
    slots = 2 if opt.name in ("adam", "adamw") else (1 if opt.momentum > 0 else 0)
    return Need(spec.name, FLOAT_BYTES * (total + slots * trainable), FLOAT_BYTES * total)


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or will: its nearest existing parent)."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check(
    specs: list[JobSpec], results: Path | None, counts: Mapping[str, Parameters] | None = None
) -> tuple[str, bool]:
    """A line for the plan (the checkpoints' size against the free space) and whether it is a warning.
    `results` is the local folder of the results, None on object storage (which has no free space to check);
    `counts` the jobs' parameters by name (runner.plan.models.counts; by default a twin's arithmetic)."""
    counts = counts or {}
    needs = [n for n in (need(s, counts.get(s.name)) for s in specs) if n is not None]
    if not needs:
        return "", False
    uncounted = len(specs) - len(needs)
    # Every job keeps its last and best; one rewrite of `last` at a time needs room for a second copy.
    total = sum(n.total for n in needs) + max(n.last for n in needs)
    line = (
        f"checkpoints: the {len(needs)} job(s) to run write up to {_gb(total)} "
        f"(largest: {max(needs, key=lambda n: n.total).job}, {_gb(max(n.total for n in needs))})"
    )
    if uncounted:
        line += f", besides {uncounted} job(s) not counted here (user code, or a library not installed here)"
    if results is None:
        return line, False
    free = free_bytes(results)
    line += f"; {_gb(free)} free under {results}"
    if total <= free:
        return line, False
    return (
        line + ". Not enough: a job stops with a full-disk message when the space runs out. "
        "Fix: free space there, or give --results a folder on a bigger disk.",
        True,
    )


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
