"""The SSE stream of one object: the current document, then every change, resumable with Last-Event-ID."""

from collections.abc import AsyncIterator
from uuid import UUID

import orjson
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import ServerSentEvent

from libs.common.db.models import ObjectEvent
from libs.common.domain import TERMINAL_STATES
from libs.common.errors import NotFoundError
from services.progress import repository  # its REPLAY_LIMIT read at each use (tests lower it)
from services.progress.hub import Event, Hub, Update
from services.progress.repository import EventReader

log = structlog.get_logger()

TERMINAL = {state.value for state in TERMINAL_STATES}


class StreamFinished(Exception):  # noqa: N818 - a signal, not an error
    """The client already has the object's final event: nothing more will come (answered 204)."""


class ProgressStreams:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], hub: Hub, retry_ms: int) -> None:
        self.sessionmaker = sessionmaker
        self.hub = hub
        self.retry_ms = retry_ms

    async def check(self, object_id: UUID, last_event_id: int | None, tenant: str | None = None) -> int | None:
        """The position to stream from. Raises before the response starts: NotFoundError for an unknown object (or,
        when `tenant` is given, one of another tenant: the same answer), StreamFinished when nothing is left.

        An id beyond the object's latest event is no id of ours (another object's, or made up): the stream starts
        from the current document, as without one. Kept, every event to come would look old and be left out."""
        async with self.sessionmaker() as session:
            reader = EventReader(session)
            owner = await reader.tenant_of(object_id) if tenant is not None else None
            latest = await reader.latest(object_id) if tenant is None or owner == tenant else None
        if latest is None:
            raise NotFoundError(f"no object with id {object_id}")
        if last_event_id is not None and last_event_id >= latest.seq and latest.document["state"] in TERMINAL:
            raise StreamFinished
        return last_event_id if last_event_id is not None and last_event_id <= latest.seq else None

    async def events(self, object_id: UUID, last_event_id: int | None) -> AsyncIterator[Event]:
        """`last_event_id` as `check` returned it. Ends (the client resumes from its Last-Event-ID) when the object's
        final event is sent, when this subscriber fell too far behind, or when PostgreSQL cannot answer."""
        # Subscribe before reading PostgreSQL, so an event committed in between arrives through the queue.
        with self.hub.subscribe(object_id) as subscription:
            last_sent = last_event_id or 0
            backlog = await self._backlog(object_id, last_event_id)
            first = True
            while backlog is not None:
                for update in backlog:
                    if update.seq <= last_sent:
                        continue
                    # The first carries `retry:`, for this stream alone; the others are the same bytes for everyone.
                    yield (
                        ServerSentEvent(data=update.data, id=str(update.seq), retry=self.retry_ms)
                        if first
                        else update.event
                    )
                    first = False
                    last_sent = update.seq
                    if update.terminal:
                        return
                if len(backlog) >= repository.REPLAY_LIMIT:  # a full page of history: read on before waiting for news
                    backlog = await self._backlog(object_id, last_sent)
                    continue
                received = await subscription.queue.get()
                if received is None:  # overflowed: close, the client resumes from its Last-Event-ID
                    return
                if received.seq == last_sent + 1:
                    backlog = [received]
                elif received.seq > last_sent + 1:  # a gap (events relayed out of order): fill it from PostgreSQL
                    backlog = await self._backlog(object_id, last_sent)
                else:
                    backlog = []

    async def _backlog(self, object_id: UUID, after: int | None) -> list[Update] | None:
        """The object's events after `after` (None: its latest alone), a page at most; None when PostgreSQL cannot
        answer (the response has started: the stream can only end)."""
        try:
            return await self._read_backlog(object_id, after)
        except (OSError, DBAPIError) as exc:
            log.warning("stream.interrupted", object_id=str(object_id), error=type(exc).__name__)
            return None

    async def _read_backlog(self, object_id: UUID, after: int | None) -> list[Update]:
        async with self.sessionmaker() as session:
            reader = EventReader(session)
            rows: list[ObjectEvent] = []
            if after is None:
                latest = await reader.latest(object_id)
                rows = [latest] if latest else []
            else:
                rows = list(await reader.after(object_id, after))
        return [
            Update.of(row.seq, orjson.dumps(row.document).decode(), row.document["state"] in TERMINAL) for row in rows
        ]
