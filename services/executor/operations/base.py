"""The one small interface every operation implements, built in or plugged in through an entry point."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import JsonValue

from libs.common.domain import DEFAULT_TENANT, object_prefix
from libs.common.options import OperationOptions
from services.executor.records import RecordStream
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
    """The object's identifier: the S3 prefix its outputs go under (below its tenant's, for other tenants)."""
    options: OptionsT
    storage: Storage
    tenant: str = DEFAULT_TENANT
    """The object's tenant: with the identifier, it decides the S3 prefix (see `object_prefix`)."""

    def output_key(self, name: str) -> str:
        return f"{object_prefix(self.identifier, self.tenant)}/{name}"


@dataclass
class OperationOutcome:
    result: dict[str, JsonValue]
    """The operation's findings: the `result` of its artifact."""
    output_url: str | None = None
    """Data that the object's following operations work on instead of their input (transform sets it)."""
    output_format: str | None = None


OperationFunction = Callable[[RecordStream, OperationContext[Any]], Awaitable[OperationOutcome]]


@dataclass(frozen=True)
class OperationSpec:
    """What registers an operation: its name, its options model, and the coroutine that runs it.

    `run` must consume `records.batches()` (in one pass: the data may be far larger than memory) and return
    an OperationOutcome; raise OperationFailedError for bad data or options.
    """

    name: str
    options_model: type[OperationOptions]
    run: OperationFunction
