import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse
from starlette.types import Message, Send

from libs.common.auth import Authenticator, Principal, Scope
from libs.common.db.models import EVENT_SEQ_MAX
from libs.common.errors import ForbiddenError, RateLimitedError
from libs.common.ratelimit import StreamSlots
from services.progress.hub import Event
from services.progress.service import ProgressStreams, StreamFinished

router = APIRouter(prefix="/api/v1")


class EventStream(EventSourceResponse):
    """sse-starlette's response, without the cancel scope it enters around every send to apply `send_timeout` when
    there is none: with ten thousand subscribers of one object, entering and leaving it was a tenth of the time one
    event took to reach them all."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def _parse_last_event_id(value: str | None) -> int | None:
    # Ids are ours (per-object sequence numbers); anything else a client sends is treated as "no position". ASCII
    # digits only: str.isdigit also takes '²' and other digits int() refuses. Their length is checked before int(),
    # which refuses more than 4,300 digits (sys.int_info.str_digits_check_threshold) with an error; and the number
    # can be no more than a seq can: a bigger one would fail the query, after the stream's 200 was sent.
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(EVENT_SEQ_MAX)):
        return None
    position = int(text)
    return position if position <= EVENT_SEQ_MAX else None


@router.get("/progress/{id}/stream", response_class=Response)
async def progress_stream(
    id: Annotated[UUID, Path()],
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    streams: ProgressStreams = request.app.state.streams
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate_stream(authenticator.credential(authorization, x_api_key), token, id)
    if not principal.allows(Scope.READ):
        raise ForbiddenError("this credential lacks the `read` scope")
    try:
        position = await streams.check(
            id, _parse_last_event_id(last_event_id), principal.tenant if authenticator.enabled else None
        )
    except StreamFinished:
        return Response(status_code=204)  # tells EventSource to stop reconnecting
    events = streams.events(id, position)
    if principal.identity is not None and request.app.state.settings.max_streams_per_key > 0:
        events = await _capped(request, principal, events)
    return EventStream(
        events,
        ping=request.app.state.settings.sse_ping_seconds,
        headers={"X-Accel-Buffering": "no"},
    )


async def _capped(request: Request, principal: Principal, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Takes one of the caller's stream slots (429 when none is free) and returns the events, which give it back
    when the stream ends; the slot is renewed while the stream runs, so a crashed instance's slots expire."""
    slots: StreamSlots = request.app.state.stream_slots
    limit: int = request.app.state.settings.max_streams_per_key
    identity = principal.identity or ""
    stream_id = uuid.uuid4().hex
    if not await slots.acquire(identity, stream_id, limit):
        raise RateLimitedError(f"at most {limit} streams may be open at once per key; close one first", 5)

    async def renew() -> None:
        while True:
            await asyncio.sleep(slots.ttl_ms / 3000)
            await slots.renew(identity, stream_id)

    async def guarded() -> AsyncIterator[Event]:
        renewer = asyncio.create_task(renew())
        try:
            async for event in events:
                yield event
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await slots.release(identity, stream_id)

    return guarded()
