"""Shared base model, name rules, and errors placed at a field."""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(value: str) -> str:
    """A name that is safe as one folder name: no slash, no '..', no leading dot."""
    if not _NAME.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a safe name: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '/' or '..'"
        )
    return value


SafeName = Annotated[str, AfterValidator(check_name)]


class Strict(BaseModel):
    """Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Problems:
    """Mistakes a model validator finds, each placed at its field ("model.weights"), raised together.

    A check that reads several fields runs on the model holding them, where pydantic would place its
    error at the model itself; raised as a ValidationError with locations, each error names its field,
    and a spec nested in another model (a suite's job, a result's spec) gets the full path.
    """

    def __init__(self, model: BaseModel) -> None:
        self.title = type(model).__name__
        self.errors: list[InitErrorDetails] = []

    def add(self, where: str, message: str, value: Any) -> None:
        self.errors.append(
            InitErrorDetails(type=PydanticCustomError("value_error", message), loc=tuple(where.split(".")), input=value)
        )

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationError.from_exception_data(self.title, self.errors)
