"""Orchestrator.run against PostgreSQL and Redis: concurrent use cases share a transaction (group commit), and one
that fails never takes the others down with it."""

import asyncio
from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import pytest
from redis.asyncio import Redis
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import ObjectEvent, ProcessingObject
from libs.common.events import CommandReplyV1, SubmitObjectV1
from services.orchestrator.handlers import Orchestrator
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService, UnitOfWork

Sessionmaker = async_sessionmaker[AsyncSession]


@pytest.fixture
def orchestrator(isolated_sessionmaker: Sessionmaker, redis: Redis) -> Orchestrator:
    relay = OutboxRelay(isolated_sessionmaker, redis, stream_maxlen=10_000)
    return Orchestrator(isolated_sessionmaker, redis, relay, ObjectService(max_parallel_workers=3))


def submission() -> SubmitObjectV1:
    return SubmitObjectV1(object_id=uuid4(), identifier=f"gc-{uuid4().hex[:12]}", operations=["validate"])


def submitting(service: ObjectService, command: SubmitObjectV1) -> Callable[[UnitOfWork], Awaitable[CommandReplyV1]]:
    return lambda uow: service.submit(uow, command)


async def stored(sessionmaker: Sessionmaker, ids: list[UUID]) -> dict[UUID, str]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(ProcessingObject.id, ProcessingObject.state).where(ProcessingObject.id.in_(ids))
        )
        return {row.id: row.state for row in rows}


async def test_concurrent_use_cases_share_transactions_and_each_gets_its_own_result(
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker
) -> None:
    commits = 0

    def count_commit(_connection: object) -> None:
        nonlocal commits
        commits += 1

    engine = isolated_sessionmaker.kw["bind"].sync_engine
    event.listen(engine, "commit", count_commit)
    commands = [submission() for _ in range(20)]
    service = orchestrator.service
    try:
        replies = await asyncio.gather(*(orchestrator.run(submitting(service, command)) for command in commands))
    finally:
        event.remove(engine, "commit", count_commit)

    # The first runs alone; the 19 that queued behind it share the next transaction.
    assert commits <= 2, commits
    assert [reply.object_id for reply in replies] == [command.object_id for command in commands]
    assert {reply.outcome for reply in replies} == {"accepted"}
    states = await stored(isolated_sessionmaker, [command.object_id for command in commands])
    assert len(states) == 20
    # The cap holds inside a shared transaction: three admitted, the rest queued, first in first out.
    assert sorted(states.values()).count("processing") == 3
    assert all(states[command.object_id] == "processing" for command in commands[:3])
    async with isolated_sessionmaker() as session:
        events = await session.scalar(
            select(func.count()).where(ObjectEvent.object_id.in_([c.object_id for c in commands]))
        )
    assert events == 20 + 3  # queued for each, processing for the admitted three


async def test_a_failing_use_case_fails_alone_and_leaves_nothing_behind(
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker
) -> None:
    service = orchestrator.service
    good = [submission() for _ in range(5)]
    doomed = submission()

    async def submit_then_fail(uow: UnitOfWork) -> CommandReplyV1:
        await service.submit(uow, doomed)  # written in the shared transaction, then the use case fails
        msg = "the handler broke"
        raise RuntimeError(msg)

    blocker = asyncio.Event()

    async def first(uow: UnitOfWork) -> CommandReplyV1:
        await blocker.wait()  # holds the turn until every other use case has queued behind it
        return await service.submit(uow, submission())

    running = asyncio.create_task(orchestrator.run(first))
    await asyncio.sleep(0)
    others = [asyncio.create_task(orchestrator.run(submitting(service, command))) for command in good[:2]]
    failing = asyncio.create_task(orchestrator.run(submit_then_fail))
    others += [asyncio.create_task(orchestrator.run(submitting(service, command))) for command in good[2:]]
    await asyncio.sleep(0.05)
    blocker.set()
    await running

    with pytest.raises(RuntimeError, match="the handler broke"):
        await failing
    replies = await asyncio.gather(*others)
    assert [reply.outcome for reply in replies] == ["accepted"] * 5
    states = await stored(isolated_sessionmaker, [command.object_id for command in [*good, doomed]])
    assert set(states) == {command.object_id for command in good}  # the failed one's write was rolled back


async def test_a_cancelled_caller_leaves_the_others_to_be_committed(
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker
) -> None:
    service = orchestrator.service
    blocker = asyncio.Event()
    commands = [submission() for _ in range(3)]

    async def first(uow: UnitOfWork) -> CommandReplyV1:
        await blocker.wait()
        return await service.submit(uow, commands[0])

    holder = asyncio.create_task(orchestrator.run(first))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(orchestrator.run(submitting(service, command))) for command in commands[1:]]
    await asyncio.sleep(0.05)
    holder.cancel()  # the caller holding the turn goes away mid-transaction
    with pytest.raises(asyncio.CancelledError):
        await holder

    replies = await asyncio.gather(*waiting)
    assert [reply.outcome for reply in replies] == ["accepted", "accepted"]
    states = await stored(isolated_sessionmaker, [command.object_id for command in commands])
    assert set(states) == {commands[1].object_id, commands[2].object_id}
