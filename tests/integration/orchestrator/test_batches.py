"""The orchestrator's batch reads, against PostgreSQL and Redis: entries are acknowledged one by one, a batch's
row locks take one statement, and so do its submissions' inserts."""

import asyncio
from collections.abc import Sequence
from typing import Any, cast
from uuid import uuid4

import orjson
import pytest
from faststream.redis.message import BatchStreamMessage
from pydantic import TypeAdapter
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import ObjectEvent, ObjectTransition, ProcessingObject
from libs.common.domain import Operation
from libs.common.events import (
    AnyOperationResult,
    CommandReplyV1,
    OperationStartedV1,
    RunOperationV1,
    SubmitObjectV1,
)
from libs.common.events.streams import (
    DATA_FIELD,
    DEAD_LETTERS,
    OBJECT_COMMANDS,
    OBJECT_EVENTS,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
    ORCHESTRATOR_GROUP,
    as_text,
)
from services.orchestrator.batches import StreamBatch
from services.orchestrator.database import Database
from services.orchestrator.handlers import Job, Orchestrator
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService, ResultAheadError
from services.orchestrator.settings import OrchestratorSettings
from tests.integration.orchestrator.conftest import Statements, completed_result

Sessionmaker = async_sessionmaker[AsyncSession]


def orchestrating(database: Database, redis: Redis) -> tuple[ObjectService, Orchestrator]:
    service = ObjectService(max_parallel_workers=3)
    return service, Orchestrator(database, redis, OutboxRelay(database, redis, stream_maxlen=1000), service)


def started(object_id: Any = None) -> OperationStartedV1:
    return OperationStartedV1(
        object_id=object_id or uuid4(), task_id=uuid4(), operation="validate", index=0, executor_id="executor-test"
    )


async def read_batch(redis: Redis, entries: Sequence[dict[str, bytes]]) -> tuple[list[str], BatchStreamMessage]:
    """Add the entries to the results stream and read them as the orchestrator's group does (so they are pending)."""
    for fields in entries:
        await redis.xadd(OPERATION_RESULTS, fields)  # type: ignore[arg-type]
    response = await redis.xreadgroup(ORCHESTRATOR_GROUP, "test-consumer", {OPERATION_RESULTS: ">"})
    [(stream, read)] = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], response)
    ids = [entry_id for entry_id, _ in read]
    message = BatchStreamMessage(
        type="bstream", channel=stream.decode(), data=[fields for _, fields in read], message_ids=ids
    )
    return [entry_id.decode() for entry_id in ids], message


async def test_a_batch_parks_what_is_malformed_and_hands_the_rest_over_with_their_entry_ids(clean: Redis) -> None:
    applied, failing = started(), started()
    ids, message = await read_batch(
        clean,
        [
            {DATA_FIELD: applied.model_dump_json().encode()},
            {DATA_FIELD: b"\x00 not json"},
            {"something": b"else"},
            {DATA_FIELD: failing.model_dump_json().encode()},
        ],
    )
    settings = OrchestratorSettings.model_construct(instance_id="test-orchestrator")
    batch = StreamBatch(clean, OPERATION_RESULTS, settings, TypeAdapter(AnyOperationResult))
    handed: list[tuple[list[object], list[str]]] = []

    async def handle(events: list[AnyOperationResult], entry_ids: list[str]) -> list[BaseException | None]:
        handed.append((list(events), entry_ids))
        return [None if event == applied else RuntimeError("database unavailable") for event in events]

    parsed = await batch.parse(message)
    await batch.consume(parsed, await batch.decode(parsed), handle)

    assert handed == [([applied, failing], [ids[0], ids[3]])], "one call for the batch, with the entries that parse"
    pending = await clean.xpending_range(OPERATION_RESULTS, ORCHESTRATOR_GROUP, min="-", max="+", count=10)
    left = [cast(bytes, entry["message_id"]).decode() for entry in pending]
    assert left == [ids[0], ids[3]], "the parked ones are acknowledged; the valid ones are left to the handler"
    parked = cast(list[tuple[bytes, dict[bytes, bytes]]], await clean.xrange(DEAD_LETTERS))
    letters = [orjson.loads(fields[DATA_FIELD.encode()]) for _, fields in parked]
    assert [letter["entry_id"] for letter in letters] == [ids[1], ids[2]]
    assert "JSON" in letters[0]["reason"] or "json" in letters[0]["reason"]
    assert letters[1]["reason"] == f"entry has no {DATA_FIELD} field"


@pytest.fixture
def row_locks(statements: Statements) -> list[str]:
    """The statements that lock processing_object rows."""
    return statements.watch(
        lambda sql: "FROM processing_object" in sql and "FOR UPDATE" in sql and "SKIP LOCKED" not in sql
    )


async def test_the_row_locks_of_a_batch_take_one_statement(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database, clean: Redis, row_locks: list[str]
) -> None:
    _, orchestrator = orchestrating(isolated_database, clean)
    commands = [
        SubmitObjectV1(object_id=uuid4(), identifier=f"it-batch-{uuid4().hex}", operations=[Operation("validate")])
        for _ in range(3)
    ]
    assert await orchestrator.handle_commands(commands) == [None, None, None]
    async with isolated_sessionmaker() as session:
        objects = (
            await session.scalars(
                select(ProcessingObject).where(ProcessingObject.id.in_([command.object_id for command in commands]))
            )
        ).all()
    assert {obj.state for obj in objects} == {"processing"}
    row_locks.clear()

    events = [
        OperationStartedV1(
            object_id=obj.id, task_id=obj.task_id, operation="validate", index=0, executor_id="executor-test"
        )
        for obj in objects
    ]
    assert await orchestrator.handle_results(events) == [None, None, None]

    assert len(row_locks) == 1, row_locks
    async with isolated_sessionmaker() as session:
        statuses = (
            await session.scalars(
                select(ProcessingObject.operations_status).where(ProcessingObject.id.in_([obj.id for obj in objects]))
            )
        ).all()
    assert all(cast(dict[str, Any], status)["validate"]["executor_id"] == "executor-test" for status in statuses)


@pytest.fixture
def object_inserts(statements: Statements) -> list[str]:
    """The INSERT statements into processing_object."""
    return statements.watch(lambda sql: sql.lstrip().startswith("INSERT INTO processing_object"))


async def test_a_batch_of_submissions_inserts_in_one_statement_and_answers_each_as_alone(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database, clean: Redis, object_inserts: list[str]
) -> None:
    service, orchestrator = orchestrating(isolated_database, clean)

    def submission(identifier: str, object_id: Any = None) -> SubmitObjectV1:
        return SubmitObjectV1(object_id=object_id or uuid4(), identifier=identifier, operations=[Operation("validate")])

    def job(command: SubmitObjectV1) -> Job[CommandReplyV1]:
        return Job(lambda uow: service.submit(uow, command), {}, submission=command)

    taken = submission(f"it-taken-{uuid4().hex}")
    assert (await orchestrator.run(job(taken).use_case)).outcome == "accepted"
    object_inserts.clear()

    first, second = submission(f"it-one-{uuid4().hex}"), submission(f"it-two-{uuid4().hex}")
    same_identifier = submission(first.identifier)  # another client, the same identifier, in the same batch
    commands = [first, second, same_identifier, submission(taken.identifier), taken]  # `taken` again: redelivered
    replies = await orchestrator.run_all([job(command) for command in commands])

    assert len(object_inserts) == 1, object_inserts
    outcomes = [(cast(CommandReplyV1, reply).outcome, cast(CommandReplyV1, reply).object_id) for reply in replies]
    assert outcomes == [
        ("accepted", first.object_id),
        ("accepted", second.object_id),
        ("exists", first.object_id),
        ("exists", taken.object_id),
        ("accepted", taken.object_id),
    ]
    async with isolated_sessionmaker() as session:
        rows = (await session.scalars(select(ProcessingObject))).all()
    assert sorted(str(row.id) for row in rows) == sorted(str(c.object_id) for c in (taken, first, second))
    async with isolated_sessionmaker() as session:  # recorded as a submission alone records it
        transitions = (
            await session.execute(
                select(ObjectTransition.from_state, ObjectTransition.to_state, ObjectTransition.event)
                .where(ObjectTransition.object_id == second.object_id)
                .order_by(ObjectTransition.id)
            )
        ).all()
        events = (await session.scalars(select(ObjectEvent).where(ObjectEvent.object_id == second.object_id))).all()
    # (then admitted: the cap has room)
    assert [tuple(t) for t in transitions][:2] == [(None, "pending", "submit"), ("pending", "queued", "enqueue")]
    assert [(e.seq, e.change, e.document["state"]) for e in events][:1] == [(1, "state_changed", "queued")]


async def test_a_command_twice_in_one_batch_is_one_object_and_accepted_twice(
    isolated_database: Database, clean: Redis, object_inserts: list[str]
) -> None:
    service, orchestrator = orchestrating(isolated_database, clean)
    command = SubmitObjectV1(
        object_id=uuid4(), identifier=f"it-twice-{uuid4().hex}", operations=[Operation("validate")]
    )
    jobs = [Job(lambda uow: service.submit(uow, command), {}, submission=command) for _ in range(2)]

    replies = await orchestrator.run_all(jobs)

    assert [(cast(CommandReplyV1, r).outcome, cast(CommandReplyV1, r).object_id) for r in replies] == [
        ("accepted", command.object_id)
    ] * 2
    assert len(object_inserts) == 2, "the batch's INSERT, then the second copy's own (which finds the row)"


async def test_what_a_commit_owes_redis_goes_in_one_round_trip_with_the_acknowledgements(
    isolated_database: Database, clean: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, orchestrator = orchestrating(isolated_database, clean)
    replies = clean.pubsub(ignore_subscribe_messages=True)
    await replies.subscribe("replies:test")
    submitted = SubmitObjectV1(
        object_id=uuid4(),
        identifier=f"it-ack-{uuid4().hex}",
        operations=[Operation("validate"), Operation("transform")],
        reply_to="replies:test",
    )
    entry_id = await clean.xadd(OBJECT_COMMANDS, {DATA_FIELD: submitted.model_dump_json()})
    await clean.xreadgroup(ORCHESTRATOR_GROUP, "test-consumer", {OBJECT_COMMANDS: ">"})
    sent: list[list[str]] = []
    pipeline = clean.pipeline

    def recording(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            sent.append([str(command_args[0]) for command_args, _ in pipe.command_stack])
            return await execute(*args, **kwargs)

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(clean, "pipeline", recording)
    assert await orchestrator.handle_commands([submitted], [as_text(entry_id)]) == [None]
    monkeypatch.undo()

    assert len(sent) == 1, "one pipeline after the commit"
    assert sent[0] == ["XADD", "XADD", "XADD", "PUBLISH", "XACK"], "events, the command to run, the answer, the ack"
    async with asyncio.timeout(5):
        while (reply := await replies.get_message(timeout=1)) is None:  # the subscription's own notice reads as None
            pass
    assert CommandReplyV1.model_validate_json(reply["data"]).outcome == "accepted"
    assert await clean.xpending(OBJECT_COMMANDS, ORCHESTRATOR_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    await replies.aclose()  # type: ignore[no-untyped-call]
    await orchestrator.relay.flush_published()
    async with isolated_database.connection() as connection:
        assert await connection.fetchval("SELECT count(*) FROM outbox_message") == 0, "published, so deleted"


async def test_a_message_redis_refuses_stays_in_the_outbox_and_the_rest_goes_on(
    isolated_database: Database, clean: Redis
) -> None:
    _, orchestrator = orchestrating(isolated_database, clean)
    await clean.delete(OBJECT_EVENTS)
    await clean.set(OBJECT_EVENTS, b"not a stream")  # every XADD to it is refused (WRONGTYPE)
    submitted = SubmitObjectV1(object_id=uuid4(), identifier=f"it-refused-{uuid4().hex}", operations=["validate"])
    entry_id = as_text(await clean.xadd(OBJECT_COMMANDS, {DATA_FIELD: submitted.model_dump_json()}))
    await clean.xreadgroup(ORCHESTRATOR_GROUP, "test-consumer", {OBJECT_COMMANDS: ">"})

    assert await orchestrator.handle_commands([submitted], [entry_id]) == [None]

    assert (await clean.xpending(OBJECT_COMMANDS, ORCHESTRATOR_GROUP))["pending"] == 0, "committed: acknowledged"
    assert await clean.xlen(OPERATION_COMMANDS) == 1, "the command to run went out"
    await orchestrator.relay.flush_published()
    async with isolated_database.connection() as connection:
        left = await connection.fetch("SELECT stream FROM outbox_message")
    assert [row["stream"] for row in left] == [OBJECT_EVENTS] * 2, "the refused events are left for the sweep"


async def test_a_result_that_must_wait_is_not_acknowledged_and_the_others_are(
    isolated_database: Database, clean: Redis
) -> None:
    _, orchestrator = orchestrating(isolated_database, clean)
    chained = ["validate", "transform"]
    first, second = (
        SubmitObjectV1(object_id=uuid4(), identifier=f"it-{uuid4().hex}", operations=chained) for _ in "12"
    )
    await orchestrator.handle_commands([first, second])
    runs = {
        run.object_id: run
        for run in (
            RunOperationV1.model_validate_json(fields[DATA_FIELD.encode()])
            for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], await clean.xrange(OPERATION_COMMANDS))
        )
    }

    # The first object's validate completes; the second's transform reports, but its validate never does.
    events = [
        completed_result(runs[first.object_id], "validate", 0),
        completed_result(runs[second.object_id], "transform", 1),
    ]
    ids, _ = await read_batch(clean, [{DATA_FIELD: event.model_dump_json().encode()} for event in events])

    outcomes = await orchestrator.handle_results(events, ids)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ResultAheadError)
    pending = await clean.xpending_range(OPERATION_RESULTS, ORCHESTRATOR_GROUP, min="-", max="+", count=10)
    assert [cast(bytes, entry["message_id"]).decode() for entry in pending] == [ids[1]], "it waits, pending"
