"""Shared base model, name rules, short quotes of user values, and errors placed at a field."""

import re
import reprlib
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

# Matched with fullmatch: `$` would accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# How much of a user's value a message quotes.
EXCERPT_CHARS = 60

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters with '…': control characters escaped, never a whole
    100 kB value repeated in a message."""
    if isinstance(value, str):
        if len(value) <= limit and len(text := repr(value)) <= limit + 2:
            return text
        # Escapes lengthen the repr: shorten the slice until the quote fits.
        n = limit
        while n > 1 and len(repr(value[:n])) > limit + 2:
            n = n * 2 // 3
        text = repr(value[:n])
        return f"{text[:-1]}…{text[-1]}"
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` as `excerpt` shows it, without the quotes: for paths and names a message shows as they are."""
    return excerpt(str(text), limit)[1:-1]


def check_name(value: str) -> str:
    """A name that is safe as one folder name: no slash, no '..', no leading dot, no control character."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{excerpt(value)} is not a safe name: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '/' or '..'"
        )
    return value


SafeName = Annotated[str, AfterValidator(check_name)]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_plain(value: str) -> str:
    """Text without control characters: a path with a newline or NUL would reach files, logs and commands."""
    if _CONTROL.search(value):
        raise ValueError(f"{excerpt(value)} holds a control character (newline, tab, NUL...): remove it")
    return value


PlainText = Annotated[str, AfterValidator(check_plain)]


class Strict(BaseModel):
    """Unknown keys are errors, not silently ignored; numbers are finite (no .inf, .nan, 1e400)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Problems:
    """Mistakes a model validator finds, each placed at its field ("model.weights"), raised together.

    A check that reads several fields runs on the model holding them, where pydantic would place its
    error at the model itself; raised as a ValidationError with locations, each error names its field,
    and a spec nested in another model (a suite's job, a result's spec) gets the full path.
    """

    def __init__(self, model: BaseModel) -> None:
        self.title = type(model).__name__
        self.errors: list[InitErrorDetails] = []

    def add(self, where: str | tuple[str, ...], message: str, value: Any) -> None:
        """An error at `where`: a dotted path ("model.weights"), or its parts when a part holds dots of its own."""
        loc = tuple(where.split(".")) if isinstance(where, str) else where
        self.errors.append(InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value))

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationError.from_exception_data(self.title, self.errors)
