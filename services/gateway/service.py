"""The gateway's use cases: validate, hand commands to the orchestrator, read state."""

from collections.abc import Awaitable, Callable
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
from services.gateway.schemas import CommandResponse, ObjectResponse, ProcessRequest, ProcessResponse, StatusResponse

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
