"""Object commands (gateway -> orchestrator), their replies, and the public object event stream."""

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from libs.common.domain import DEFAULT_TENANT, ObjectState, OperationName
from libs.common.events.base import Message
from libs.common.events.data import JsonObject
from libs.common.progress import ProgressDocument


class ObjectCommand(Message):
    reply_to: str | None = None
    """Redis pub/sub channel the orchestrator answers on once the command's effect is committed."""
    tenant: str = DEFAULT_TENANT
    """The tenant of the credential that sent the command. A submitted object belongs to it; a cancel or retry of
    another tenant's object is answered `not_found`, exactly as for an object that does not exist."""


class SubmitObjectV1(ObjectCommand):
    """Gateway -> orchestrator, once per accepted `POST /api/v1/process`.

    The orchestrator records the object (pending -> queued) unless `identifier` is already taken in `tenant`,
    in which case it answers with the existing object and changes nothing.
    """

    type: Literal["object.submit.v1"] = "object.submit.v1"
    identifier: str
    operations: list[OperationName]
    payload: JsonValue = None
    source: str | None = None
    data_format: Literal["json", "ndjson", "csv"] | None = None
    options: dict[str, JsonObject] = Field(default_factory=dict)
    metadata: JsonObject = Field(default_factory=dict)


class CancelObjectV1(ObjectCommand):
    """Gateway -> orchestrator: cancel now (pending, queued) or after the running operation (processing)."""

    type: Literal["object.cancel.v1"] = "object.cancel.v1"


class RetryObjectV1(ObjectCommand):
    """Gateway -> orchestrator: put a failed object back in the queue; it resumes after its last completed operation."""

    type: Literal["object.retry.v1"] = "object.retry.v1"


AnyObjectCommand = Annotated[SubmitObjectV1 | CancelObjectV1 | RetryObjectV1, Field(discriminator="type")]


class CommandReplyV1(BaseModel):
    """Orchestrator -> the gateway instance named in `reply_to`, after the command's transaction commits.

    `outcome`: `accepted` (state changed as asked), `exists` (submit of a taken identifier; `object_id` is the
    existing object), `conflict` (the object's state does not allow the command), `not_found`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["object.command_reply.v1"] = "object.command_reply.v1"
    command_id: UUID
    outcome: Literal["accepted", "exists", "conflict", "not_found"]
    object_id: UUID | None = None
    identifier: str | None = None
    state: ObjectState | None = None
    task_id: UUID | None = None
    detail: str = ""


class ObjectProgressedV1(Message):
    """Orchestrator -> anyone, on `objects:events`, after every change of an object that a watcher can see.

    `seq` counts the object's events from 1 with no gaps; consumers may rely on it to order and de-duplicate.
    `document` is the full progress document after the change (the body of `GET /api/v1/progress/{id}`), so a
    consumer never needs an earlier event to know the current state.
    """

    type: Literal["object.progressed.v1"] = "object.progressed.v1"
    seq: int = Field(ge=1)
    change: Literal["state_changed", "operation_started", "operation_completed", "cancel_requested"]
    document: ProgressDocument
