"""ProgressStreams on a real database: a stream that resumes far behind replays the object's whole history, page
after page, to its final event; an id that is none of the object's starts from its current document; a database
that cannot answer ends the stream instead of failing it."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sse_starlette import ServerSentEvent

from deploy.local.stack import free_port
from libs.common.db.models import ObjectEvent, ProcessingObject
from libs.common.domain import ObjectState
from services.progress import repository
from services.progress.hub import Hub
from services.progress.service import ProgressStreams
from tests.unit.progress.test_hub import event


def event_id(event: ServerSentEvent | bytes) -> str | None:
    if isinstance(event, ServerSentEvent):
        return event.id
    return next(line[4:] for line in event.decode().splitlines() if line.startswith("id: "))


@pytest.fixture
async def unreachable() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")  # nothing listens
    yield async_sessionmaker(engine)
    await engine.dispose()


async def an_object_with_events(
    sessionmaker: async_sessionmaker[AsyncSession], count: int, final: str = "completed"
) -> UUID:
    """An object whose `count` events end in state `final`."""
    object_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        session.add(
            ProcessingObject(
                id=object_id,
                identifier=f"replay-{object_id.hex[:8]}",
                state=final,
                operations=["validate"],
                task_id=uuid.uuid4(),
                event_seq=count,
            )
        )
        await session.flush()
        for seq in range(1, count + 1):
            state = final if seq == count else "processing"
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


async def test_an_id_beyond_the_object_s_events_streams_from_its_current_document(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    object_id = await an_object_with_events(sessionmaker, 3, final="processing")
    hub = Hub(queue_size=16)
    streams = ProgressStreams(sessionmaker, hub, retry_ms=1000)

    position = await streams.check(object_id, 999)  # another object's id, say: none of this one's

    assert position is None
    stream = streams.events(object_id, position)
    assert event_id(await anext(stream)) == "3"
    # Kept at 999, the stream would have left out every event to come as old.
    hub.publish(event(object_id, 4, ObjectState.COMPLETED))
    assert event_id(await asyncio.wait_for(anext(stream), timeout=5)) == "4"


async def test_a_database_that_cannot_answer_ends_the_stream(unreachable: async_sessionmaker[AsyncSession]) -> None:
    streams = ProgressStreams(unreachable, Hub(queue_size=16), retry_ms=1000)
    assert [event async for event in streams.events(uuid.uuid4(), 0)] == []
