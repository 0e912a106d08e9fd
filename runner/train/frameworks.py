"""Framework trainers, as schemas.registry declares them. Each trainer module exposes
`train(ctx: TrainContext) -> RunResult` and never imports Ray."""

from collections.abc import Callable

from runner.train.common import TrainContext
from runner.train.declared import load
from schemas import RunResult
from schemas.registry import FRAMEWORKS


def get(framework: str) -> Callable[[TrainContext], RunResult]:
    """The train function of a framework, imported only when asked for."""
    return load(FRAMEWORKS[framework].trainer).train
