"""The code a registry entry names (schemas.registry), imported only when it is needed."""

from importlib import import_module
from typing import Any


def load(target: str) -> Any:
    """A module ("runner.train.torch_trainer") or an attribute of one ("runner.train.data:load_digits")."""
    module, _, attribute = target.partition(":")
    loaded = import_module(module)
    return getattr(loaded, attribute) if attribute else loaded
