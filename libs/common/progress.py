"""The progress document: the body of `GET /api/v1/progress/{id}`, of each SSE event, and of ObjectProgressedV1."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from libs.common.domain import ObjectState


class OperationStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    completed: bool
    s3_url: str | None = None


class Progress(BaseModel):
    model_config = ConfigDict(frozen=True)

    current: int
    """1-based position of the running operation; the number of completed operations when none runs."""
    total: int
    message: str


class ProgressDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: UUID
    identifier: str
    state: ObjectState
    current_operation: str | None
    progress: Progress
    operations_status: dict[str, OperationStatus]
    s3_artifacts: dict[str, str]
    error_message: str | None
    task_id: UUID
    operations: list[str]
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime


def progress_message(
    state: ObjectState, current_operation: str | None, error_message: str | None, cancel_requested: bool
) -> str:
    if state is ObjectState.PROCESSING:
        running = f"Executing {current_operation}" if current_operation else "Waiting for an executor"
        return f"{running}; cancellation requested" if cancel_requested else running
    return {
        ObjectState.PENDING: "Object received",
        ObjectState.QUEUED: "Object queued for processing",
        ObjectState.COMPLETED: "All operations completed",
        ObjectState.FAILED: f"Failed: {error_message}" if error_message else "Failed",
        ObjectState.CANCELLED: "Cancelled",
    }[state]


class ObjectView(Protocol):
    """What a progress document is built from: a `processing_object` row, as the ORM model (the gateway) or as a
    plain record (the orchestrator) holds it."""

    @property
    def id(self) -> UUID: ...
    @property
    def identifier(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def operations(self) -> Sequence[str]: ...
    @property
    def operations_status(self) -> dict[str, Any]: ...
    @property
    def current_operation(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def task_id(self) -> UUID: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


def build_progress_document(obj: ObjectView) -> ProgressDocument:
    state = ObjectState(obj.state)
    statuses = {
        op: OperationStatus(completed=bool(status.get("completed")), s3_url=status.get("s3_url"))
        for op in obj.operations
        for status in [obj.operations_status.get(op) or {}]
    }
    completed = sum(status.completed for status in statuses.values())
    running = obj.current_operation if state is ObjectState.PROCESSING else None
    current = obj.operations.index(running) + 1 if running in obj.operations else completed
    return ProgressDocument(
        id=obj.id,
        identifier=obj.identifier,
        state=state,
        current_operation=running,
        progress=Progress(
            current=current,
            total=len(obj.operations),
            message=progress_message(state, running, obj.error_message, obj.cancel_requested),
        ),
        operations_status=statuses,
        s3_artifacts={op: status.s3_url for op, status in statuses.items() if status.s3_url},
        error_message=obj.error_message,
        task_id=obj.task_id,
        operations=list(obj.operations),
        cancel_requested=obj.cancel_requested,
        created_at=obj.created_at,
        updated_at=obj.updated_at,
    )
