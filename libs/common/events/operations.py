"""Operation commands (orchestrator -> executors) and their results (executors -> orchestrator)."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from libs.common.domain import DEFAULT_TENANT, UNSTORABLE_CHARACTERS, OperationName
from libs.common.events.base import Message
from libs.common.events.data import JsonObject


class OperationMessage(Message):
    task_id: UUID
    """The run of the object this operation belongs to; a retry starts a new run, so stale results are told apart."""
    operation: OperationName
    index: int = Field(ge=0)
    """Position of the operation in the object's list, from 0."""


class ChainedOperation(BaseModel):
    """An operation of the object to run after the command's own, with its options from the request."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    operation: OperationName
    options: JsonObject = Field(default_factory=dict)


class RunOperationV1(OperationMessage):
    """Orchestrator -> one executor of the `executor` group: run one operation of one object, then those in `then`.

    The object's data is `data_url` (an s3:// URL: the request's `source`, or an earlier operation's output),
    else the inline `payload`, else the object's own record (`identifier` and `metadata`). Large data never
    travels in the message (claim check): only its URL does.
    """

    type: Literal["operation.run.v1"] = "operation.run.v1"
    identifier: str
    tenant: str = DEFAULT_TENANT
    """The object's tenant: artifacts go under `{identifier}/` for the default tenant, else under
    `tenants/{tenant}/{identifier}/`."""
    total: int = Field(ge=1)
    data_url: str | None = None
    data_format: Literal["json", "ndjson", "csv"] | None = None
    payload: JsonValue = None
    metadata: JsonObject = Field(default_factory=dict)
    options: JsonObject = Field(default_factory=dict)
    resent: bool = False
    """True when the orchestrator sends the command again because the first copy was lost: the operation may
    have completed already, so the executor looks for its artifact before running it."""
    then: list[ChainedOperation] = Field(default_factory=list)
    """The object's following operations, in order. The same executor runs each as soon as the one before it
    completes, on that one's output, and reports each result as it comes; it stops at a failure, or when the
    object's cancellation was requested (reporting `operation.cancelled.v1` for the operation it did not start).
    One command per object instead of one per operation: no round trip through the orchestrator between two
    operations of an object, which still applies every result, in order, in a transaction of its own."""

    def following(self, completed: "OperationCompletedV1") -> "RunOperationV1 | None":
        """The chain's next step once this operation `completed`: the next operation of `then`, on this one's output
        if it wrote one (as the orchestrator would send it); None at the chain's end."""
        if not self.then:
            return None
        step, *rest = self.then
        data = (
            {"data_url": completed.output_url, "data_format": completed.output_format} if completed.output_url else {}
        )
        return self.model_copy(
            update={"operation": step.operation, "options": step.options, "index": self.index + 1, "then": rest, **data}
        )


class OperationStartedV1(OperationMessage):
    """Executor -> orchestrator, for an operation still running after the executor's STARTED_REPORT_DELAY_MS
    (`occurred_at` is when it began); a shorter one reports only its completion."""

    type: Literal["operation.started.v1"] = "operation.started.v1"
    executor_id: str


class OperationCompletedV1(OperationMessage):
    """Executor -> orchestrator, once the operation's artifact is stored in S3.

    `output_url`, when set, is the data that the object's following operations work on.
    """

    type: Literal["operation.completed.v1"] = "operation.completed.v1"
    executor_id: str
    s3_url: str
    output_url: str | None = None
    output_format: Literal["json", "ndjson", "csv"] | None = None
    duration_ms: float = Field(ge=0)
    started_at: datetime | None = None
    """When the run that stored the artifact began (absent from older executors)."""


def _storable(text: str) -> str:
    """The text with U+FFFD for each NUL (PostgreSQL stores none in text or jsonb) and each lone surrogate (no UTF-8
    at all): an error that quotes the object's data may hold either, and the failure could then never be recorded."""
    return UNSTORABLE_CHARACTERS.sub("\ufffd", text)


class OperationFailedV1(OperationMessage):
    """Executor -> orchestrator, when an operation cannot succeed (invalid data, bad options, storage gone)."""

    type: Literal["operation.failed.v1"] = "operation.failed.v1"
    executor_id: str
    error: Annotated[str, AfterValidator(_storable)]


class OperationCancelledV1(OperationMessage):
    """Executor -> orchestrator: the next operation of a chain (see `RunOperationV1.then`) was not started, because
    the object's cancellation was requested while the one before it ran."""

    type: Literal["operation.cancelled.v1"] = "operation.cancelled.v1"
    executor_id: str


AnyOperationResult = Annotated[
    OperationStartedV1 | OperationCompletedV1 | OperationFailedV1 | OperationCancelledV1, Field(discriminator="type")
]
