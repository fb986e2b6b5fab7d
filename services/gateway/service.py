"""The gateway's use cases: validate, hand commands to the orchestrator, read state."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlencode
from uuid import UUID, uuid4

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.auth import Principal, StreamTokens
from libs.common.db.models import ProcessingObject
from libs.common.domain import DEFAULT_TENANT, TENANTS_PREFIX, ObjectState
from libs.common.errors import InvalidTransitionError, NotFoundError, ServiceError, UnavailableError
from libs.common.events import CancelObjectV1, CommandReplyV1, RetryObjectV1, SubmitObjectV1
from libs.common.progress import ProgressDocument, build_progress_document
from services.gateway.commands import CommandBus
from services.gateway.repository import ObjectReader, StatusReader
from services.gateway.schemas import (
    BulkRetryRequest,
    BulkRetryResponse,
    CommandResponse,
    ObjectPage,
    ObjectResponse,
    ProcessRequest,
    ProcessResponse,
    StatusResponse,
    StreamTokenResponse,
)

T = TypeVar("T")


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"
    title = "Payload too large"
    http_status = 413


class ReservedIdentifierError(ServiceError):
    code = "reserved_identifier"
    title = "Invalid request"
    http_status = 422


class StreamTokensOffError(ServiceError):
    code = "stream_tokens_off"
    title = "Not found"
    http_status = 404


class UnexpectedReplyError(RuntimeError):
    """The orchestrator answered without the fields its outcome promises: a bug, never a client error."""

    def __init__(self, reply: CommandReplyV1) -> None:
        super().__init__(f"incomplete reply from the orchestrator: {reply.model_dump_json()}")


class TooManyOperationsError(ServiceError):
    code = "too_many_operations"
    title = "Too many operations"
    http_status = 422


@dataclass(frozen=True)
class SubmissionLimits:
    """What one submission may carry (MAX_PAYLOAD_BYTES, MAX_OPERATIONS, MAX_OPTIONS_BYTES, MAX_METADATA_BYTES)."""

    payload_bytes: int
    operations: int
    options_bytes: int
    metadata_bytes: int

    def check(self, request: ProcessRequest, payload_bytes: int) -> None:
        if payload_bytes > self.payload_bytes:
            msg = (
                f"the inline payload is {payload_bytes} bytes; the limit is {self.payload_bytes}. "
                "Upload larger data to S3 and pass its s3:// URL as `source`."
            )
            raise PayloadTooLargeError(msg)
        if len(request.operations) > self.operations:
            msg = f"{len(request.operations)} operations; an object may have at most {self.operations}"
            raise TooManyOperationsError(msg)
        for name, value, limit in (
            ("options", request.options, self.options_bytes),
            ("metadata", request.metadata, self.metadata_bytes),
        ):
            size = len(orjson.dumps(value))
            if size > limit:
                msg = f"`{name}` is {size} bytes as JSON; the limit is {limit}"
                raise PayloadTooLargeError(msg)


class GatewayService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        commands: CommandBus,
        max_parallel_workers: int,
        limits: SubmissionLimits,
        stream_tokens: StreamTokens | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.commands = commands
        self.max_parallel_workers = max_parallel_workers
        self.limits = limits
        self.stream_tokens = stream_tokens

    async def submit(self, tenant: str, request: ProcessRequest, payload_bytes: int) -> tuple[ProcessResponse, bool]:
        """Returns the answer and whether the object is new (False: the identifier was already submitted)."""
        self.limits.check(request, payload_bytes)
        if tenant == DEFAULT_TENANT and request.identifier == TENANTS_PREFIX:
            raise ReservedIdentifierError(
                f"'{TENANTS_PREFIX}' is reserved: the artifacts of other tenants are stored under that S3 prefix"
            )
        # No look for the identifier first: the orchestrator's insert finds it taken ("exists"), so a new object, by
        # far the common case, costs no database round trip here (the look is the fallback, below).
        command = SubmitObjectV1(
            object_id=uuid4(),
            reply_to=self.commands.reply_channel,
            tenant=tenant,
            identifier=request.identifier,
            operations=request.operations,
            payload=request.payload,
            source=request.source,
            data_format=request.format,
            options=request.options,
            metadata=request.metadata,
        )
        try:
            reply = await self.commands.send(command)
        except UnavailableError:
            # A repeat of a request whose object is recorded gets that object even while the orchestrator cannot
            # answer (the README's advice for a 503: repeat the same request); a new object gets the 503.
            existing = await self._read(tenant, lambda r: r.get_by_identifier(request.identifier))
            if existing is None:
                raise
            return self._existing(existing), False
        if reply.outcome == "exists" and reply.object_id is not None:
            found_id = reply.object_id
            existing = await self._read(tenant, lambda r: r.get(found_id))
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

    async def cancel(self, tenant: str, object_id: UUID) -> CommandResponse:
        # The orchestrator checks the tenant too: an object of another tenant is `not_found` there as well.
        await self._owned(tenant, object_id)
        return self._command_response(
            await self.commands.send(
                CancelObjectV1(object_id=object_id, tenant=tenant, reply_to=self.commands.reply_channel)
            )
        )

    async def retry(self, tenant: str, object_id: UUID) -> CommandResponse:
        await self._owned(tenant, object_id)
        return self._command_response(
            await self.commands.send(
                RetryObjectV1(object_id=object_id, tenant=tenant, reply_to=self.commands.reply_channel)
            )
        )

    async def progress(self, tenant: str, object_id: UUID) -> ProgressDocument:
        return build_progress_document(await self._owned(tenant, object_id))

    async def stream_token(self, principal: Principal, object_id: UUID) -> StreamTokenResponse:
        await self._owned(principal.tenant, object_id)
        if self.stream_tokens is None:
            raise StreamTokensOffError("stream tokens are off with authentication: open the stream without one")
        token, expires_at = self.stream_tokens.sign(object_id, principal.tenant, principal.identity, principal.key_id)
        return StreamTokenResponse(
            token=token,
            expires_at=expires_at,
            stream_url=f"/api/v1/progress/{object_id}/stream?{urlencode({'token': token})}",
        )

    async def object_by_identifier(self, tenant: str, identifier: str) -> ObjectResponse:
        obj = await self._read(tenant, lambda r: r.get_by_identifier(identifier))
        if obj is None:
            raise NotFoundError(f"no object with identifier {identifier!r}")
        return _object_response(obj)

    async def list_objects(self, tenant: str, state: ObjectState | None, cursor: str | None, limit: int) -> ObjectPage:
        after = _decode_cursor(cursor) if cursor else None
        rows = await self._read(tenant, lambda r: r.page(state, after, limit + 1))
        items = [_object_response(obj) for obj in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return ObjectPage(items=items, next_cursor=next_cursor)

    async def retry_many(self, tenant: str, request: BulkRetryRequest) -> BulkRetryResponse:
        if request.ids is not None:
            ids = list(dict.fromkeys(request.ids))
        else:
            rows = await self._read(tenant, lambda r: r.page(ObjectState.FAILED, None, request.limit))
            ids = [obj.id for obj in rows]
        retried: list[UUID] = []
        refused: list[dict[str, str]] = []
        gate = asyncio.Semaphore(16)

        async def one(object_id: UUID) -> None:
            async with gate:
                try:
                    await self.retry(tenant, object_id)
                    retried.append(object_id)
                except (NotFoundError, InvalidTransitionError) as exc:
                    refused.append({"id": str(object_id), "reason": str(exc)})

        await asyncio.gather(*(one(object_id) for object_id in ids))
        return BulkRetryResponse(retried=retried, refused=refused)

    async def status(self) -> StatusResponse:
        async with self.sessionmaker() as session:
            counts = await StatusReader(session).count_by_state()
        return StatusResponse(
            queue_size=counts.get(ObjectState.QUEUED, 0),
            active_workers=counts.get(ObjectState.PROCESSING, 0),
            max_workers=self.max_parallel_workers,
        )

    async def _read(self, tenant: str, query: Callable[[ObjectReader], Awaitable[T]]) -> T:
        async with self.sessionmaker() as session:
            return await query(ObjectReader(session, tenant))

    async def _owned(self, tenant: str, object_id: UUID) -> ProcessingObject:
        """The tenant's object; NotFoundError, worded as for a missing one, when it is another tenant's."""
        obj = await self._read(tenant, lambda r: r.get(object_id))
        if obj is None:
            raise NotFoundError(f"no object with id {object_id}")
        return obj

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
