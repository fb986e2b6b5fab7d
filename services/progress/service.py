"""The SSE stream of one object: the current document, then every change, resumable with Last-Event-ID."""

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import ServerSentEvent

from libs.common.db.models import ObjectEvent
from libs.common.domain import ObjectState
from libs.common.errors import NotFoundError
from libs.common.events import ObjectProgressedV1
from services.progress.hub import Hub, Subscription
from services.progress.repository import EventReader

TERMINAL = {state.value for state in (ObjectState.COMPLETED, ObjectState.FAILED, ObjectState.CANCELLED)}


class StreamFinished(Exception):  # noqa: N818 - a signal, not an error
    """The client already has the object's final event: nothing more will come (answered 204)."""


class ProgressStreams:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], hub: Hub, retry_ms: int) -> None:
        self.sessionmaker = sessionmaker
        self.hub = hub
        self.retry_ms = retry_ms

    async def check(self, object_id: UUID, last_event_id: int | None, tenant: str | None = None) -> None:
        """Raise before the response starts: NotFoundError for an unknown object (or, when `tenant` is given, one of
        another tenant: the same answer), StreamFinished when nothing is left."""
        async with self.sessionmaker() as session:
            reader = EventReader(session)
            owner = await reader.tenant_of(object_id) if tenant is not None else None
            latest = await reader.latest(object_id) if tenant is None or owner == tenant else None
        if latest is None:
            raise NotFoundError(f"no object with id {object_id}")
        if last_event_id is not None and last_event_id >= latest.seq and latest.document["state"] in TERMINAL:
            raise StreamFinished

    async def events(self, object_id: UUID, last_event_id: int | None) -> AsyncIterator[ServerSentEvent]:
        # Subscribe before reading PostgreSQL, so an event committed in between arrives through the queue.
        with self.hub.subscribe(object_id) as subscription:
            last_sent = last_event_id or 0
            backlog = await self._backlog(object_id, last_event_id)
            first = True
            while True:
                for seq, document in backlog:
                    if seq <= last_sent:
                        continue
                    yield ServerSentEvent(
                        data=orjson.dumps(document).decode(), id=str(seq), retry=self.retry_ms if first else None
                    )
                    first = False
                    last_sent = seq
                    if document["state"] in TERMINAL:
                        return
                event = await self._next(subscription)
                if event is None:  # overflowed: close, the client resumes from its Last-Event-ID
                    return
                if event.seq == last_sent + 1:
                    backlog = [(event.seq, event.document.model_dump(mode="json"))]
                elif event.seq > last_sent + 1:  # a gap (events relayed out of order): fill it from PostgreSQL
                    backlog = await self._backlog(object_id, last_sent)
                else:
                    backlog = []

    async def _backlog(self, object_id: UUID, after: int | None) -> list[tuple[int, dict[str, object]]]:
        async with self.sessionmaker() as session:
            reader = EventReader(session)
            rows: list[ObjectEvent] = []
            if after is None:
                latest = await reader.latest(object_id)
                rows = [latest] if latest else []
            else:
                rows = list(await reader.after(object_id, after))
        return [(row.seq, row.document) for row in rows]

    @staticmethod
    async def _next(subscription: Subscription) -> ObjectProgressedV1 | None:
        if subscription.overflowed.is_set():
            return None
        get = asyncio.ensure_future(subscription.queue.get())
        overflow = asyncio.ensure_future(subscription.overflowed.wait())
        try:
            done, _ = await asyncio.wait({get, overflow}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            get.cancel()
            overflow.cancel()
        if get in done and not get.cancelled():
            return get.result()
        return None
