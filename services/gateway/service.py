"""The gateway's use cases: validate, hand commands to the orchestrator, read state."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar
from uuid import UUID, uuid4

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import ProcessingObject
from libs.common.domain import ObjectState
from libs.common.errors import InvalidTransitionError, NotFoundError, ServiceError
from libs.common.events import CancelObjectV1, CommandReplyV1, RetryObjectV1, SubmitObjectV1
from libs.common.progress import ProgressDocument, build_progress_document
from services.gateway.commands import CommandBus
from services.gateway.repository import ObjectReader
from services.gateway.schemas import (
    BulkRetryRequest,
    BulkRetryResponse,
    CommandResponse,
    ObjectPage,
    ObjectResponse,
    ProcessRequest,
    ProcessResponse,
    StatusResponse,
)

T = TypeVar("T")


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"
    title = "Payload too large"
    http_status = 413


class UnexpectedReplyError(RuntimeError):
    """The orchestrator answered without the fields its outcome promises: a bug, never a client error."""

    def __init__(self, reply: CommandReplyV1) -> None:
        super().__init__(f"incomplete reply from the orchestrator: {reply.model_dump_json()}")


class GatewayService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        commands: CommandBus,
        max_parallel_workers: int,
        max_payload_bytes: int,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.commands = commands
        self.max_parallel_workers = max_parallel_workers
        self.max_payload_bytes = max_payload_bytes

    async def submit(self, request: ProcessRequest, payload_bytes: int) -> tuple[ProcessResponse, bool]:
        """Returns the answer and whether the object is new (False: the identifier was already submitted)."""
        if payload_bytes > self.max_payload_bytes:
            msg = (
                f"the inline payload is {payload_bytes} bytes; the limit is {self.max_payload_bytes}. "
                "Upload larger data to S3 and pass its s3:// URL as `source`."
            )
            raise PayloadTooLargeError(msg)
        existing = await self._read(lambda r: r.get_by_identifier(request.identifier))
        if existing is not None:
            return self._existing(existing), False
        command = SubmitObjectV1(
            object_id=uuid4(),
            reply_to=self.commands.reply_channel,
            identifier=request.identifier,
            operations=request.operations,
            payload=request.payload,
            source=request.source,
            data_format=request.format,
            options=request.options,
            metadata=request.metadata,
        )
        reply = await self.commands.send(command)
        if reply.outcome == "exists" and reply.object_id is not None:
            found_id = reply.object_id
            existing = await self._read(lambda r: r.get(found_id))
            if existing is not None:
                return self._existing(existing), False
        if reply.object_id is None or reply.task_id is None:
            raise UnexpectedReplyError(reply)
        return (
            ProcessResponse(
                id=reply.object_id,
                identifier=request.identifier,
                # The orchestrator may already have admitted it; the answer reports the state it was accepted in.
                state=ObjectState.QUEUED,
                task_id=reply.task_id,
                message="Object queued for processing",
            ),
            True,
        )

    async def cancel(self, object_id: UUID) -> CommandResponse:
        return self._command_response(
            await self.commands.send(CancelObjectV1(object_id=object_id, reply_to=self.commands.reply_channel))
        )

    async def retry(self, object_id: UUID) -> CommandResponse:
        return self._command_response(
            await self.commands.send(RetryObjectV1(object_id=object_id, reply_to=self.commands.reply_channel))
        )

    async def progress(self, object_id: UUID) -> ProgressDocument:
        obj = await self._read(lambda r: r.get(object_id))
        if obj is None:
            raise NotFoundError(f"no object with id {object_id}")
        return build_progress_document(obj)

    async def object_by_identifier(self, identifier: str) -> ObjectResponse:
        obj = await self._read(lambda r: r.get_by_identifier(identifier))
        if obj is None:
            raise NotFoundError(f"no object with identifier {identifier!r}")
        return _object_response(obj)

    async def list_objects(self, state: ObjectState | None, cursor: str | None, limit: int) -> ObjectPage:
        after = _decode_cursor(cursor) if cursor else None
        rows = await self._read(lambda r: r.page(state, after, limit + 1))
        items = [_object_response(obj) for obj in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return ObjectPage(items=items, next_cursor=next_cursor)

    async def retry_many(self, request: BulkRetryRequest) -> BulkRetryResponse:
        if request.ids is not None:
            ids = list(dict.fromkeys(request.ids))
        else:
            rows = await self._read(lambda r: r.page(ObjectState.FAILED, None, request.limit))
            ids = [obj.id for obj in rows]
        retried: list[UUID] = []
        refused: list[dict[str, str]] = []
        gate = asyncio.Semaphore(16)

        async def one(object_id: UUID) -> None:
            async with gate:
                try:
                    await self.retry(object_id)
                    retried.append(object_id)
                except (NotFoundError, InvalidTransitionError) as exc:
                    refused.append({"id": str(object_id), "reason": str(exc)})

        await asyncio.gather(*(one(object_id) for object_id in ids))
        return BulkRetryResponse(retried=retried, refused=refused)

    async def status(self) -> StatusResponse:
        async with self.sessionmaker() as session:
            counts = await ObjectReader(session).count_by_state()
        return StatusResponse(
            queue_size=counts.get(ObjectState.QUEUED, 0),
            active_workers=counts.get(ObjectState.PROCESSING, 0),
            max_workers=self.max_parallel_workers,
        )

    async def _read(self, query: Callable[[ObjectReader], Awaitable[T]]) -> T:
        async with self.sessionmaker() as session:
            return await query(ObjectReader(session))

    @staticmethod
    def _existing(obj: ProcessingObject) -> ProcessResponse:
        return ProcessResponse(
            id=obj.id,
            identifier=obj.identifier,
            state=ObjectState(obj.state),
            task_id=obj.task_id,
            message="An object with this identifier was already submitted; this is that object",
        )

    @staticmethod
    def _command_response(reply: CommandReplyV1) -> CommandResponse:
        if reply.outcome == "not_found":
            raise NotFoundError(reply.detail or "no object with this id")
        if reply.outcome == "conflict":
            raise InvalidTransitionError(reply.detail)
        if reply.object_id is None or reply.identifier is None or reply.state is None:
            raise UnexpectedReplyError(reply)
        return CommandResponse(id=reply.object_id, identifier=reply.identifier, state=reply.state, message=reply.detail)


def _object_response(obj: ProcessingObject) -> ObjectResponse:
    document = build_progress_document(obj)
    return ObjectResponse(
        **document.model_dump(
            include={
                "id",
                "identifier",
                "state",
                "operations",
                "current_operation",
                "operations_status",
                "s3_artifacts",
                "error_message",
                "task_id",
                "cancel_requested",
                "created_at",
                "updated_at",
            }
        ),
        attempt=obj.attempt,
        source=obj.source,
        metadata=obj.object_metadata,
        queued_at=obj.queued_at,
        started_at=obj.started_at,
        finished_at=obj.finished_at,
    )


class InvalidCursorError(ServiceError):
    code = "invalid_cursor"
    title = "Invalid cursor"
    http_status = 422


def _encode_cursor(obj: ProcessingObject) -> str:
    return base64.urlsafe_b64encode(f"{obj.created_at.isoformat()}|{obj.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, _, object_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created_at), UUID(object_id)
    except ValueError:
        raise InvalidCursorError("`cursor` is not one this API returned; start again without it") from None
