"""Framework trainers. Each module exposes `train(ctx: TrainContext) -> RunResult` and never imports Ray."""

from collections.abc import Callable
from importlib import import_module

from runner.train.common import TrainContext
from schemas import RunResult

_MODULES = {"torch": "runner.train.torch_trainer", "tensorflow": "runner.train.tf_trainer"}


def get(framework: str) -> Callable[[TrainContext], RunResult]:
    """The train function of a framework, imported only when asked for."""
    return import_module(_MODULES[framework]).train
