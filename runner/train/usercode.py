"""The user's own code: a `<module>:<function>` of the suite's code: folder, imported and called by the worker.

Whatever goes wrong in it (the module is missing or does not import, the function is missing or takes
other parameters, it raises, it returns the wrong thing) ends as one UserError naming the module, the file
and line, and the fix, on one line: the worker prints it and exits 2, and the driver records it as the
job's reason without retrying (a retry would fail alike). Framework-neutral: the caller checks what a
function returned (`returned_wrong`).
"""

import difflib
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from runner.errors import UserError

MESSAGE_CHARS = 300  # of an exception's own message, quoted in ours
CODE_ENV = "GRIDRUN_CODE"  # the suite's code: folder as the worker sees it, set by the executor


@dataclass(frozen=True)
class Folder:
    """The code folder: where this process imports it from, and how messages name it (the folder on the
    driver's machine, where a container sees it elsewhere)."""

    path: Path
    shown: Path

    def show(self, filename: str) -> str:
        """A file of the traceback, named as the user knows it."""
        try:
            return str(self.shown / Path(filename).resolve().relative_to(self.path))
        except (ValueError, OSError):
            return filename

    def holds(self, filename: str | None) -> bool:
        try:
            return filename is not None and Path(filename).resolve().is_relative_to(self.path)
        except OSError:
            return False


_folder: Folder | None = None


def use(path: Path, shown: str = "") -> None:
    """Import the user's modules from `path` (first on the import path, as a script's own folder is); messages
    name its files under `shown`."""
    global _folder
    path = Path(path).resolve()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    _folder = Folder(path, Path(shown) if shown else path)


def _show(filename: str) -> str:
    return _folder.show(filename) if _folder is not None else filename


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _where(tb: TracebackType | None) -> str:
    """file:line of the innermost frame in the user's code (else the innermost frame), as the user names it."""
    frames = traceback.extract_tb(tb)
    own = [f for f in frames if _folder is None or _folder.holds(f.filename)]
    frame = (own or frames or [None])[-1]
    return f"{_show(frame.filename)}:{frame.lineno}" if frame is not None else "?"


def _defined_at(fn: Any) -> str:
    try:
        return f"{_show(inspect.getsourcefile(fn) or '?')}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__module__", "?")


def _in_folder() -> str:
    return f" in the code folder {_folder.shown}" if _folder is not None else ""


def _import(field: str, ref: str) -> ModuleType:
    module = ref.partition(":")[0]
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            base = module.replace(".", "/")
            raise UserError(
                f"{field} {ref}: module {module} is not{_in_folder()} (no {base}.py, no {base}/__init__.py). "
                "Fix: put it there, or correct the module's name before ':'"
            ) from None
        raise UserError(
            f"{field} {ref}: module {module} ({_where(e.__traceback__)}) imports {e.name}, which is not installed "
            "where the job runs. Fix: install it (in the framework's image for the docker executor, in this "
            "Python for the process executor), or remove the import"
        ) from None
    except SyntaxError as e:  # IndentationError and TabError too
        line = f"{_show(e.filename or '?')}:{e.lineno}"
        raise UserError(
            f"{field} {ref}: module {module} does not compile: {type(e).__name__} at {line}: {e.msg}. "
            "Fix: correct that line"
        ) from None
    except (Exception, SystemExit) as e:  # anything its top level runs; never a KeyboardInterrupt (a stop)
        raise UserError(
            f"{field} {ref}: importing module {module} raised {_one_line(e)} at {_where(e.__traceback__)}. "
            "Fix: correct the code there (the module is imported by each job before it trains)"
        ) from None
    where = getattr(loaded, "__file__", None)
    if _folder is not None and not _folder.holds(where):
        raise UserError(
            f"{field} {ref}: module {module} is Python's or an installed library's ({where or 'built in'}), not "
            f"the one in the code folder {_folder.shown}. Fix: rename your module so that no other has its name"
        )
    return loaded


def function(field: str, ref: str) -> Callable[..., Any]:
    """The function `ref` names, imported; UserError with the module, file and fix when it cannot be had."""
    loaded = _import(field, ref)
    name = ref.partition(":")[2]
    fn = getattr(loaded, name, None)
    source = _show(getattr(loaded, "__file__", None) or loaded.__name__)
    if fn is None:
        defined = [n for n, v in vars(loaded).items() if inspect.isfunction(v) and not n.startswith("_")]
        close = difflib.get_close_matches(name, defined, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (it defines {', '.join(defined[:8]) or 'none'})"
        raise UserError(
            f"{field} {ref}: module {loaded.__name__} ({source}) has no function {name!r}{hint}. Fix: define "
            f"{name} there, or correct the name after ':'"
        )
    if not callable(fn):
        raise UserError(
            f"{field} {ref}: {loaded.__name__}.{name} ({source}) is {kind(fn)}, not a function. "
            f"Fix: make {name} a function, or name one after ':'"
        )
    return fn


def call(field: str, ref: str, args: tuple[Any, ...], called_as: str) -> Any:
    """Import and call `ref` with `args` (`called_as` shows the call in words, e.g. build(num_classes,
    weights_path)); its result as it came. UserError for anything that goes wrong on the way."""
    fn = function(field, ref)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        raise UserError(
            f"{field} {ref} ({_defined_at(fn)}) takes {_signature(fn)}, but gridrun calls it as {called_as}. "
            "Fix: give it those parameters"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    try:
        return fn(*args)
    except (Exception, SystemExit) as e:
        raise UserError(
            f"{field} {ref} raised {_one_line(e)} at {_where(e.__traceback__)}, called as {called_as}. "
            "Fix: correct your function"
        ) from None


def _signature(fn: Any) -> str:
    try:
        return f"{fn.__name__}{inspect.signature(fn)}"
    except (TypeError, ValueError, AttributeError):
        return "other parameters"


def returned_wrong(field: str, ref: str, got: Any, wanted: str, fix: str) -> UserError:
    """The message for a function of the user's that returned something else than `wanted`."""
    fn = function(field, ref)  # imported already: only its place is looked up
    return UserError(f"{field} {ref} ({_defined_at(fn)}) returned {kind(got)}, not {wanted}. Fix: {fix}")


def kind(value: Any) -> str:
    """'a dict', 'an int', 'None': what a value is, in words."""
    name = type(value).__name__
    return "None" if value is None else f"a{'n' if name[:1].lower() in 'aeiou' else ''} {name}"


def model(ref: str, classes: int, weights: Path | None, kind: type, wanted: str, example: str) -> tuple[Any, str]:
    """The network `function(num_classes, weights_path_or_None)` builds, checked to be a `kind` (`wanted` in
    words), and a line for the log saying what it is."""
    path = str(weights) if weights is not None else None
    field = "model.arch"
    built = call(field, ref, (classes, path), f"{ref.partition(':')[2]}({classes}, {path!r})")
    if not isinstance(built, kind):
        raise returned_wrong(field, ref, built, wanted, f"return the network, e.g. `{example}`")
    return built, f"model: {ref}, your own, {'weights from ' + path if path else 'as built'}"


def check_logits(out: Any, classes: int, what: str) -> None:
    """UserError unless `out`, a model's output for 2 images, is logits of shape (2, classes)."""
    shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
    if shape != (2, classes):
        raise UserError(
            f"{what} returns {shape} for a batch of 2 images, not logits of shape (2, {classes}). Fix: make the "
            f"model end in a layer of num_classes outputs ({classes} here) and return its output alone"
        )


def run(field: str, ref: str, step: Callable[[], Any], doing: str) -> Any:
    """`step()`, a call into the user's objects (a model's forward pass): an exception becomes the message."""
    try:
        return step()
    except (Exception, SystemExit) as e:
        raise UserError(
            f"{field} {ref}: {doing} raised {_one_line(e)} at {_where(e.__traceback__)}. Fix: correct your code there"
        ) from None
