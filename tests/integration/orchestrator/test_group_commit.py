"""Orchestrator.run against PostgreSQL and Redis: concurrent use cases share a transaction (group commit), and one
that fails never takes the others down with it."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import ObjectEvent, ProcessingObject
from libs.common.events import CommandReplyV1, SubmitObjectV1
from services.orchestrator.database import Database
from services.orchestrator.handlers import Orchestrator
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService, UnitOfWork
from tests.integration.orchestrator.conftest import Statements

Sessionmaker = async_sessionmaker[AsyncSession]


@pytest.fixture
def orchestrator(isolated_database: Database, redis: Redis) -> Orchestrator:
    relay = OutboxRelay(isolated_database, redis, stream_maxlen=10_000)
    return Orchestrator(isolated_database, redis, relay, ObjectService(max_parallel_workers=3))


@pytest.fixture
def transactions(statements: Statements) -> Counter[str]:
    """How many transactions the orchestrator committed and rolled back on the test's database."""
    counts: Counter[str] = Counter()
    ends = {"COMMIT;": "commit", "ROLLBACK;": "rollback"}  # what asyncpg's Transaction sends

    def ended(sql: str) -> bool:
        if sql in ends:
            counts[ends[sql]] += 1
        return False

    statements.watch(ended)
    return counts


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
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker, transactions: Counter[str]
) -> None:
    commands = [submission() for _ in range(20)]
    service = orchestrator.service
    replies = await asyncio.gather(*(orchestrator.run(submitting(service, command)) for command in commands))

    # The first runs alone; the 19 that queued behind it share the next transaction.
    assert transactions["commit"] == 2, transactions
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
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker, transactions: Counter[str]
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
    # The six shared a transaction that failed (one rollback), then ran alone: five commits and one more rollback.
    assert (transactions["commit"], transactions["rollback"]) == (1 + 5, 2), transactions
    states = await stored(isolated_sessionmaker, [command.object_id for command in [*good, doomed]])
    assert set(states) == {command.object_id for command in good}  # the failed one's write was rolled back


async def test_a_caller_cancelled_mid_batch_leaves_the_batch_to_finish_once(
    orchestrator: Orchestrator, isolated_sessionmaker: Sessionmaker
) -> None:
    service = orchestrator.service
    commands = [submission() for _ in range(4)]
    gate, hold = asyncio.Event(), asyncio.Event()
    runs: Counter[int] = Counter()

    def waiting_for(signal: asyncio.Event, n: int) -> Callable[[UnitOfWork], Awaitable[CommandReplyV1]]:
        async def use_case(uow: UnitOfWork) -> CommandReplyV1:
            await signal.wait()
            return await service.submit(uow, commands[n])

        return use_case

    def counted(n: int) -> Callable[[UnitOfWork], Awaitable[CommandReplyV1]]:
        async def use_case(uow: UnitOfWork) -> CommandReplyV1:
            runs[n] += 1
            return await service.submit(uow, commands[n])

        return use_case

    first = asyncio.create_task(orchestrator.run(waiting_for(gate, 0)))
    await asyncio.sleep(0)
    holder = asyncio.create_task(orchestrator.run(counted(1)))
    others = [
        asyncio.create_task(orchestrator.run(counted(2))),
        asyncio.create_task(orchestrator.run(waiting_for(hold, 3))),
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await first  # its batch committed; `holder` now runs the next one: 1, 2, then 3, which waits
    await asyncio.sleep(0.05)
    assert runs == {1: 1, 2: 1}
    holder.cancel()  # its caller goes away (shutdown) in the middle of the batch's transaction
    with pytest.raises(asyncio.CancelledError):
        await holder
    hold.set()

    replies = await asyncio.gather(*others)
    assert [reply.outcome for reply in replies] == ["accepted", "accepted"]
    assert runs == {1: 1, 2: 1}, "the batch finished once: nothing went back to the queue to run again"
    states = await stored(isolated_sessionmaker, [command.object_id for command in commands])
    assert set(states) == {command.object_id for command in commands}  # the holder's work committed with the rest
