"""Lost work is found and re-sent from PostgreSQL, and work that Redis still shows is left alone; results of an
object's chain of operations apply in order."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast
from uuid import UUID, uuid4

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.broker import ensure_topology
from libs.common.db.models import ProcessingObject
from libs.common.domain import Operation
from libs.common.events import CancelObjectV1, RunOperationV1, SubmitObjectV1
from libs.common.events.streams import (
    DATA_FIELD,
    EXECUTOR_GROUP,
    OPERATION_COMMANDS,
    RUN_DONE,
    cancel_requested_key,
    running_operation_key,
)
from services.orchestrator.database import Database
from services.orchestrator.handlers import Orchestrator
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.repository import InFlight
from services.orchestrator.service import ObjectService, ResultAheadError, UnitOfWork
from tests.integration.orchestrator.conftest import completed_result


@pytest.fixture
def orchestrator(isolated_database: Database, clean: Redis) -> Orchestrator:
    relay = OutboxRelay(isolated_database, clean, stream_maxlen=1000)
    return Orchestrator(isolated_database, clean, relay, ObjectService(max_parallel_workers=3))


async def submit(orchestrator: Orchestrator, operations: Sequence[str] = ("validate",)) -> UUID:
    command = SubmitObjectV1(
        object_id=uuid4(), identifier=f"it-inflight-{uuid4().hex}", operations=[Operation(op) for op in operations]
    )
    await orchestrator.handle_command(command)
    return command.object_id


async def commands_for(redis: Redis, object_id: UUID) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_COMMANDS))
    return [
        entry_id.decode()
        for entry_id, fields in entries
        if orjson.loads(fields[DATA_FIELD.encode()])["object_id"] == str(object_id)
    ]


async def test_a_queued_command_is_not_sent_again(orchestrator: Orchestrator, redis: Redis) -> None:
    object_id = await submit(orchestrator)
    assert len(await commands_for(redis, object_id)) == 1

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 0
    assert len(await commands_for(redis, object_id)) == 1


async def test_a_pending_command_is_left_to_the_reclaimer(orchestrator: Orchestrator, redis: Redis) -> None:
    await submit(orchestrator)
    await redis.xreadgroup(EXECUTOR_GROUP, "executor-that-died", {OPERATION_COMMANDS: ">"}, count=10)

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 0


async def test_a_running_operation_is_left_alone(orchestrator: Orchestrator, redis: Redis) -> None:
    object_id = await submit(orchestrator)
    [entry_id] = await commands_for(redis, object_id)
    await redis.xreadgroup(EXECUTOR_GROUP, "executor-1", {OPERATION_COMMANDS: ">"}, count=10)
    await redis.xack(OPERATION_COMMANDS, EXECUTOR_GROUP, entry_id)  # only the running key is left
    command = orjson.loads(
        cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_COMMANDS))[0][1][DATA_FIELD.encode()]
    )
    await redis.set(running_operation_key(object_id, command["operation"], command["task_id"]), "executor-1")

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 0


async def test_a_lost_command_is_sent_again_once(orchestrator: Orchestrator, redis: Redis) -> None:
    object_id = await submit(orchestrator)
    [entry_id] = await commands_for(redis, object_id)
    await redis.xdel(OPERATION_COMMANDS, entry_id)  # gone, as when Redis loses its data

    assert await orchestrator.redispatch_lost(older_than_seconds=3600) == 0, "too recent to be called lost"
    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 1
    assert len(await commands_for(redis, object_id)) == 1
    # The re-sent command is now queued: nothing more to re-send.
    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 0


async def test_redis_emptied_everything_in_flight_is_sent_again(orchestrator: Orchestrator, redis: Redis) -> None:
    objects = [await submit(orchestrator) for _ in range(4)]  # three admitted, one queued
    await redis.flushdb()
    await ensure_topology(redis)

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 3
    sent = [len(await commands_for(redis, object_id)) for object_id in objects]
    assert sorted(sent) == [0, 1, 1, 1]


async def test_a_run_marked_done_whose_result_never_came_is_sent_again(
    orchestrator: Orchestrator, redis: Redis
) -> None:
    object_id = await submit(orchestrator)
    [entry_id] = await commands_for(redis, object_id)
    command = orjson.loads(
        cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_COMMANDS))[0][1][DATA_FIELD.encode()]
    )
    await redis.xreadgroup(EXECUTOR_GROUP, "executor-1", {OPERATION_COMMANDS: ">"}, count=10)
    await redis.xack(OPERATION_COMMANDS, EXECUTOR_GROUP, entry_id)
    await redis.set(running_operation_key(object_id, command["operation"], command["task_id"]), RUN_DONE)

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 1
    resent = orjson.loads(
        cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_COMMANDS))[-1][1][DATA_FIELD.encode()]
    )
    assert resent["resent"] is True, "the executor is told to look for the artifact first"


async def test_a_lost_command_of_an_object_being_cancelled_cancels_it(
    orchestrator: Orchestrator, redis: Redis, isolated_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    object_id = await submit(orchestrator)
    [entry_id] = await commands_for(redis, object_id)
    command = await _first_command(redis)
    await orchestrator.handle_command(CancelObjectV1(object_id=object_id))
    # The executor is told once the cancellation is committed.
    assert await redis.get(cancel_requested_key(object_id, command.task_id)) is not None
    await redis.xdel(OPERATION_COMMANDS, entry_id)  # then the command is lost: nothing runs for the object

    assert await orchestrator.redispatch_lost(older_than_seconds=0) == 1

    assert await commands_for(redis, object_id) == [], "nothing is sent again for it"
    async with isolated_sessionmaker() as session:
        obj = await session.get(ProcessingObject, object_id)
    assert obj is not None
    assert obj.state == "cancelled"


async def test_a_result_read_before_its_objects_earlier_one_is_applied_after_it(
    orchestrator: Orchestrator, redis: Redis, isolated_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    object_id = await submit(orchestrator, ["validate", "transform", "analyze"])
    command = await _first_command(redis)
    validate, transform = (
        completed_result(command, Operation.VALIDATE, 0),
        completed_result(command, Operation.TRANSFORM, 1),
    )

    # In one batch, in the wrong order: transform's waits for validate's, then applies.
    assert await orchestrator.handle_results([transform, validate]) == [None, None]

    async with isolated_sessionmaker() as session:
        obj = await session.get(ProcessingObject, object_id)
    assert obj is not None
    assert obj.current_operation == "analyze"
    assert obj.operations_status["transform"]["completed"] is True


async def test_a_result_whose_objects_earlier_one_never_comes_is_left_pending(orchestrator: Orchestrator) -> None:
    await submit(orchestrator, ["validate", "transform"])
    command = await _first_command(orchestrator.redis)

    [outcome] = await orchestrator.handle_results([completed_result(command, Operation.TRANSFORM, 1)])

    assert isinstance(outcome, ResultAheadError)  # its message stays pending, for the Reclaimer to try again


async def _first_command(redis: Redis) -> RunOperationV1:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_COMMANDS))
    return RunOperationV1.model_validate_json(entries[0][1][DATA_FIELD.encode()])


async def test_an_object_whose_chain_moved_on_since_it_was_found_is_left_alone(
    orchestrator: Orchestrator, redis: Redis, isolated_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    object_id = await submit(orchestrator, ["validate", "transform"])
    command = await _first_command(redis)
    await orchestrator.handle_command(CancelObjectV1(object_id=object_id))
    found = InFlight(object_id, "validate", command.task_id)  # found with no trace of validate in Redis...
    await orchestrator.handle_results(
        [completed_result(command, Operation.VALIDATE, 0)]
    )  # ...but it completed meanwhile

    async with orchestrator.database.transaction() as connection:
        uow = UnitOfWork(connection)
        assert await orchestrator.service.redispatch(uow, [found], datetime.now(UTC)) == 0
        await uow.flush()

    async with isolated_sessionmaker() as session:
        obj = await session.get(ProcessingObject, object_id)
    assert obj is not None
    # Still waiting for the executor to stop after validate (operation.cancelled.v1), not cancelled under it.
    assert (obj.state, obj.current_operation) == ("processing", "transform")
