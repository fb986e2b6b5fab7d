"""OutboxRelay against PostgreSQL and Redis: rows become stream entries once, and only then disappear."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import cast
from uuid import uuid4

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import OutboxMessage
from libs.common.events.streams import DATA_FIELD
from services.orchestrator.database import Database
from services.orchestrator.outbox import BATCH_SIZE, OutboxRelay
from services.orchestrator.repository import OutboxRow

Sessionmaker = async_sessionmaker[AsyncSession]


@pytest.fixture
async def streams(redis: Redis) -> AsyncIterator[list[str]]:
    """Unique stream names for one test; deleted afterwards."""
    names = [f"test:outbox:{uuid4().hex}" for _ in range(2)]
    yield names
    await redis.delete(*names)


def body(n: int) -> str:
    return orjson.dumps({"n": n, "id": uuid4().hex}).decode()


async def add_rows(sessionmaker: Sessionmaker, rows: Sequence[tuple[str, str]]) -> list[int]:
    async with sessionmaker.begin() as session:
        messages = [OutboxMessage(stream=stream, body=text) for stream, text in rows]
        session.add_all(messages)
        await session.flush()
        return [message.id for message in messages]


async def remaining(sessionmaker: Sessionmaker, ids: Sequence[int]) -> int:
    async with sessionmaker() as session:
        query = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.id.in_(ids))
        return await session.scalar(query) or 0


async def bodies(redis: Redis, stream: str) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    for _, fields in entries:
        assert list(fields) == [DATA_FIELD.encode()]
    return [fields[DATA_FIELD.encode()].decode() for _, fields in entries]


async def drain(relay: OutboxRelay) -> int:
    total = 0
    while published := await relay.publish():
        total += published
    return total


async def test_publish_adds_each_row_to_its_stream_in_order_and_deletes_it(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    first, second = streams
    rows = [(first, body(1)), (second, body(2)), (first, body(3))]
    ids = await add_rows(sessionmaker, rows)
    relay = OutboxRelay(database, redis, stream_maxlen=1000)

    assert await relay.publish(ids) == 3

    assert await bodies(redis, first) == [rows[0][1], rows[2][1]]
    assert await bodies(redis, second) == [rows[1][1]]
    assert await remaining(sessionmaker, ids) == 0


async def test_publish_does_nothing_when_rows_are_already_published(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    ids = await add_rows(sessionmaker, [(streams[0], body(1))])
    relay = OutboxRelay(database, redis, stream_maxlen=1000)
    assert await relay.publish(ids) == 1

    assert await relay.publish(ids) == 0
    assert await relay.publish([]) == 0
    assert len(await bodies(redis, streams[0])) == 1


async def test_publish_keeps_the_rows_when_redis_is_unreachable(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    ids = await add_rows(sessionmaker, [(streams[0], body(1)), (streams[0], body(2))])
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        with pytest.raises(RedisConnectionError):
            await OutboxRelay(database, unreachable, stream_maxlen=1000).publish(ids)
    finally:
        await unreachable.aclose()

    assert await remaining(sessionmaker, ids) == 2
    assert await OutboxRelay(database, redis, stream_maxlen=1000).publish(ids) == 2
    assert len(await bodies(redis, streams[0])) == 2


async def test_two_relays_publish_the_same_rows_exactly_once(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    rows = [(streams[n % 2], body(n)) for n in range(50)]
    ids = await add_rows(sessionmaker, rows)
    relays = [OutboxRelay(database, redis, stream_maxlen=1000) for _ in range(2)]

    counts = await asyncio.gather(*(relay.publish(ids) for relay in relays))

    assert sum(counts) == 50
    published = await bodies(redis, streams[0]) + await bodies(redis, streams[1])
    assert sorted(published) == sorted(text for _, text in rows)
    assert await remaining(sessionmaker, ids) == 0


async def test_two_sweeping_relays_publish_every_pending_row_exactly_once(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database, redis: Redis, streams: list[str]
) -> None:
    # More rows than one batch, so each relay sweeps several batches while the other holds some locked.
    rows = [(streams[n % 2], body(n)) for n in range(2 * BATCH_SIZE + 123)]
    await add_rows(isolated_sessionmaker, rows)
    relays = [OutboxRelay(isolated_database, redis, stream_maxlen=100_000) for _ in range(2)]

    counts = await asyncio.gather(*(drain(relay) for relay in relays))

    assert sum(counts) == len(rows)
    published = await bodies(redis, streams[0]) + await bodies(redis, streams[1])
    assert len(published) == len(rows)
    assert sorted(published) == sorted(text for _, text in rows)
    async with isolated_sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


async def test_run_sweeps_rows_committed_after_it_started(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database, redis: Redis, streams: list[str]
) -> None:
    relay = OutboxRelay(isolated_database, redis, stream_maxlen=1000)
    sweeper = asyncio.create_task(relay.run(interval=0.05))
    try:
        ids = await add_rows(isolated_sessionmaker, [(streams[0], body(1)), (streams[1], body(2))])
        async with asyncio.timeout(10):
            while await remaining(isolated_sessionmaker, ids):
                await asyncio.sleep(0.05)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    assert len(await bodies(redis, streams[0])) == 1
    assert len(await bodies(redis, streams[1])) == 1


async def test_publish_committed_adds_rows_from_memory_and_deletes_them(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    texts = [body(n) for n in range(3)]
    ids = await add_rows(sessionmaker, [(streams[0], text) for text in texts])
    rows = [OutboxRow(streams[0], text, row_id) for text, row_id in zip(texts, ids, strict=True)]
    relay = OutboxRelay(database, redis, stream_maxlen=1000)

    await relay.publish_committed(rows)

    assert await bodies(redis, streams[0]) == [row.body for row in rows]
    assert await remaining(sessionmaker, [row.id for row in rows]) == 3, "deleted later, many at a time"
    await relay.flush_published()
    assert await remaining(sessionmaker, [row.id for row in rows]) == 0


async def test_the_sweep_leaves_fresh_rows_to_the_fast_path(
    sessionmaker: Sessionmaker, database: Database, redis: Redis, streams: list[str]
) -> None:
    ids = await add_rows(sessionmaker, [(streams[0], body(1))])
    relay = OutboxRelay(database, redis, stream_maxlen=1000)

    assert await relay.publish(ids, min_age_seconds=60) == 0, "committed just now: the fast path publishes it"
    async with sessionmaker.begin() as session:
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(created_at=func.now() - timedelta(minutes=2))
        )
    assert await relay.publish(ids, min_age_seconds=60) == 1, "left behind by a crashed instance: swept"
