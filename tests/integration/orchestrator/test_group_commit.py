"""Orchestrator.run against PostgreSQL and Redis: concurrent use cases share a transaction (group commit), and one
that fails never takes the others down with it; a transaction the database cut off runs again."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from deploy.local.stack import free_port
from libs.common.db.models import ObjectEvent, ProcessingObject
from libs.common.events import CancelObjectV1, CommandReplyV1, OperationCompletedV1, SubmitObjectV1
from services.orchestrator import handlers
from services.orchestrator.database import Database
from services.orchestrator.handlers import Job, Orchestrator, UseCase
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


# --- admission sees what its own transaction changed -----------------------------------------------------------------


def with_cap(database: Database, redis: Redis, cap: int) -> Orchestrator:
    return Orchestrator(database, redis, OutboxRelay(database, redis, stream_maxlen=10_000), ObjectService(cap))


async def test_an_object_cancelled_in_the_batch_that_admits_is_not_admitted(
    isolated_database: Database, isolated_sessionmaker: Sessionmaker, redis: Redis, statements: Statements
) -> None:
    one = with_cap(isolated_database, redis, cap=1)
    running, waiting = submission(), submission()
    await one.handle_commands([running])
    await one.handle_commands([waiting])  # queued: the cap of one is full
    later = submission()

    # With room for two, one batch cancels the queued object and submits another: admission must take the new one,
    # not the one this very transaction cancelled (which it still holds, so SKIP LOCKED would not pass it over).
    two = with_cap(isolated_database, redis, cap=2)
    ends = statements.watch(lambda sql: sql in ("COMMIT;", "ROLLBACK;"))
    assert await two.handle_commands([CancelObjectV1(object_id=waiting.object_id), later]) == [None, None]

    assert ends == ["COMMIT;"], "one transaction for both, not a failed one retried one by one"

    states = await stored(isolated_sessionmaker, [running.object_id, waiting.object_id, later.object_id])
    assert states == {running.object_id: "processing", waiting.object_id: "cancelled", later.object_id: "processing"}


async def test_a_slot_freed_by_a_result_is_filled_in_the_same_transaction(
    isolated_database: Database, isolated_sessionmaker: Sessionmaker, redis: Redis, statements: Statements
) -> None:
    one = with_cap(isolated_database, redis, cap=1)
    running, waiting = submission(), submission()
    await one.handle_commands([running, waiting])
    async with isolated_sessionmaker() as session:
        task_id = await session.scalar(select(ProcessingObject.task_id).where(ProcessingObject.id == running.object_id))
    assert task_id is not None
    commits = statements.watch(lambda sql: sql == "COMMIT;")

    done = OperationCompletedV1(
        object_id=running.object_id,
        task_id=task_id,
        operation="validate",
        index=0,
        executor_id="executor-test",
        s3_url="s3://artifacts/x/validate_result.json",
        duration_ms=1.0,
    )
    assert await one.handle_results([done]) == [None]

    assert len(commits) == 1, "completed and the next admitted in one transaction"
    states = await stored(isolated_sessionmaker, [running.object_id, waiting.object_id])
    assert states == {running.object_id: "completed", waiting.object_id: "processing"}


# --- a database that goes away for a moment ---------------------------------------------------------------------------


def cut_off_once(
    service: ObjectService, command: SubmitObjectV1, runs: list[int], dsn: str, between_statements: bool
) -> UseCase[CommandReplyV1]:
    """A submission whose first run loses its connection mid-transaction: its server process is terminated, as a
    PostgreSQL restart or failover ends every session. Either while a statement runs, or from another session
    between two statements (asyncpg then lets go of the connection at once, and the next statement meets that)."""

    async def use_case(uow: UnitOfWork) -> CommandReplyV1:
        runs.append(1)
        if len(runs) == 1 and between_statements:
            pid = await uow.connection.fetchval("SELECT pg_backend_pid()")
            other = await asyncpg.connect(dsn)
            try:
                await other.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await other.close()
            await asyncio.sleep(0.2)  # for the loop to see the connection close
        reply = await service.submit(uow, command)
        if len(runs) == 1 and not between_statements:
            await uow.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return reply

    return use_case


@pytest.mark.parametrize("between_statements", [False, True], ids=["in a statement", "between statements"])
async def test_a_transaction_cut_off_by_the_server_runs_again_and_applies_once(
    orchestrator: Orchestrator,
    isolated_database: Database,
    isolated_sessionmaker: Sessionmaker,
    transactions: Counter[str],
    between_statements: bool,
) -> None:
    command, plain = submission(), submission()
    runs: list[int] = []
    use_case = cut_off_once(orchestrator.service, command, runs, isolated_database.dsn, between_statements)
    reply = await orchestrator.run(use_case)
    await orchestrator.run(submitting(orchestrator.service, plain))

    assert reply.outcome == "accepted"
    assert len(runs) == 2, "run again after the connection was lost, not left for the Reclaimer"
    assert transactions["commit"] == 2
    states = await stored(isolated_sessionmaker, [command.object_id, plain.object_id])
    assert states == {command.object_id: "processing", plain.object_id: "processing"}
    async with isolated_sessionmaker() as session:
        rows = await session.execute(
            select(ObjectEvent.object_id, func.count())
            .where(ObjectEvent.object_id.in_([command.object_id, plain.object_id]))
            .group_by(ObjectEvent.object_id)
        )
        events: dict[UUID, int] = dict(rows.all())
    assert events[command.object_id] == events[plain.object_id], "the first run's writes went with its connection"


async def test_a_use_case_that_fails_is_not_run_again(orchestrator: Orchestrator) -> None:
    runs: list[int] = []

    async def failing(uow: UnitOfWork) -> None:
        runs.append(1)
        raise ValueError("not a database error")

    with pytest.raises(ValueError, match="not a database error"):
        await orchestrator.run(failing)
    assert runs == [1]


async def test_a_database_that_stays_unreachable_fails_the_batch_once_the_retries_run_out(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "DATABASE_RETRY_SECONDS", 1.0)
    nowhere = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", size=2)  # nothing listens there
    await nowhere.open()
    try:
        orchestrator = Orchestrator(nowhere, redis, OutboxRelay(nowhere, redis, stream_maxlen=1000), ObjectService(3))
        attempts: list[int] = []
        transaction = orchestrator._transaction

        async def counted(batch: list[Any]) -> list[Any]:
            attempts.append(len(batch))
            return await transaction(batch)

        monkeypatch.setattr(orchestrator, "_transaction", counted)
        commands = [submission() for _ in range(3)]
        outcomes = await orchestrator.run_all(
            [Job(submitting(orchestrator.service, command), {}) for command in commands]
        )
    finally:
        await nowhere.close()
    # Each caller gets the error (its message stays pending), after the batch was tried again within the window,
    # and never one by one after it (which would keep them waiting three windows).
    assert all(isinstance(outcome, OSError) for outcome in outcomes), outcomes
    assert len(attempts) > 1, "tried again"
    assert set(attempts) == {3}, f"the batch was split: {attempts}"
