"""A stream that resumes far behind replays the object's whole history from PostgreSQL, page after page, to its
final event."""

import asyncio
import uuid
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import ServerSentEvent

from libs.common.db.models import ObjectEvent, ProcessingObject
from services.progress import repository
from services.progress.hub import Hub
from services.progress.service import ProgressStreams


def event_id(event: ServerSentEvent | bytes) -> str | None:
    if isinstance(event, ServerSentEvent):
        return event.id
    return next(line[4:] for line in event.decode().splitlines() if line.startswith("id: "))


async def an_object_with_events(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> UUID:
    """An object whose `count` events end with `completed`."""
    object_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        session.add(
            ProcessingObject(
                id=object_id,
                identifier=f"replay-{object_id.hex[:8]}",
                state="completed",
                operations=["validate"],
                task_id=uuid.uuid4(),
                event_seq=count,
            )
        )
        await session.flush()
        for seq in range(1, count + 1):
            state = "completed" if seq == count else "processing"
            session.add(ObjectEvent(object_id=object_id, seq=seq, change="state_changed", document={"state": state}))
    return object_id


async def test_a_stream_resumed_from_the_start_replays_every_page_to_the_end(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "REPLAY_LIMIT", 3)
    object_id = await an_object_with_events(sessionmaker, 8)
    streams = ProgressStreams(sessionmaker, Hub(queue_size=16), retry_ms=1000)

    async def replay() -> list[str | None]:
        return [event_id(event) async for event in streams.events(object_id, last_event_id=0)]

    # Before: the first page, then a wait for news that never comes (the object is finished).
    ids = await asyncio.wait_for(replay(), timeout=5)
    assert ids == [str(seq) for seq in range(1, 9)]
