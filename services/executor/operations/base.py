"""The one small interface every operation implements."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import JsonValue

from libs.common.options import OperationOptions
from services.executor.data import Dataset
from services.executor.storage import Storage

OptionsT = TypeVar("OptionsT", bound=OperationOptions)


class OperationFailedError(Exception):
    """The data or options make the operation fail for good; retrying the same input would fail again.

    `report`, when given, is stored as the operation's artifact so the caller can see every problem.
    """

    def __init__(self, message: str, report: dict[str, JsonValue] | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class OperationContext(Generic[OptionsT]):
    identifier: str
    options: OptionsT
    storage: Storage
    input_sha256: str
    input_bytes: int
    input_format: str


@dataclass
class OperationOutcome:
    result: dict[str, JsonValue]
    output: Dataset | None = None
    """Data the object's following operations work on instead of their input (only transform sets it)."""
    extra: dict[str, Any] = field(default_factory=dict)


OperationFunction = Callable[[Dataset, OperationContext[Any]], Awaitable[OperationOutcome]]


@dataclass(frozen=True)
class OperationSpec:
    name: str
    options_model: type[OperationOptions]
    run: OperationFunction
