"""ObjectService against PostgreSQL: each use case runs in one transaction, as the stream handlers run it.

Tests that only submit and cancel use the session's shared database and look only at their own objects.
Admission is global to a database (it counts every `processing` object and takes the oldest `queued` ones),
so tests that admit run on a database of their own (`isolated_database`, see conftest.py). The use cases run
on the orchestrator's Database; what they wrote is read back through the models (the schema).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db.models import ObjectEvent, ObjectTransition, OutboxMessage, ProcessingObject
from libs.common.domain import ObjectState, Operation
from libs.common.events import (
    CancelObjectV1,
    ChainedOperation,
    CommandReplyV1,
    ObjectProgressedV1,
    OperationCancelledV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationStartedV1,
    RetryObjectV1,
    RunOperationV1,
    SubmitObjectV1,
)
from libs.common.events.streams import OBJECT_EVENTS, OPERATION_COMMANDS
from services.orchestrator.database import Database
from services.orchestrator.repository import WRITE, ObjectRepository, OutboxRow
from services.orchestrator.service import ObjectService, ResultAheadError, UnitOfWork
from tests.integration.orchestrator.conftest import Statements

T = TypeVar("T")
Sessionmaker = async_sessionmaker[AsyncSession]

EXECUTOR_ID = "executor-test"


@dataclass
class Applied(Generic[T]):
    """What one committed use case returned and owes to Redis."""

    result: T
    outbox: list[OutboxRow]
    admission_needed: bool
    cancelled_runs: list[tuple[UUID, UUID]]

    def runs(self) -> list[RunOperationV1]:
        return [RunOperationV1.model_validate_json(m.body) for m in self.outbox if m.stream == OPERATION_COMMANDS]

    def progressed(self) -> list[ObjectProgressedV1]:
        return [ObjectProgressedV1.model_validate_json(m.body) for m in self.outbox if m.stream == OBJECT_EVENTS]


async def apply(database: Database, use_case: Callable[[UnitOfWork], Awaitable[T]]) -> Applied[T]:
    """Run a use case the way services/orchestrator/handlers.py does: one transaction, outbox flushed inside it."""
    async with database.transaction() as connection:
        uow = UnitOfWork(connection)
        result = await use_case(uow)
        await uow.flush()
    return Applied(result, list(uow.outbox), uow.admission_needed, uow.cancelled_runs)


@dataclass
class Snapshot:
    obj: ProcessingObject
    transitions: list[tuple[str | None, str, str]]
    events: list[ObjectEvent]


async def snapshot(sessionmaker: Sessionmaker, object_id: UUID) -> Snapshot:
    async with sessionmaker() as session:
        obj = await session.get(ProcessingObject, object_id)
        assert obj is not None, f"no object {object_id}"
        transitions = await session.scalars(
            select(ObjectTransition).where(ObjectTransition.object_id == object_id).order_by(ObjectTransition.id)
        )
        events = await session.scalars(
            select(ObjectEvent).where(ObjectEvent.object_id == object_id).order_by(ObjectEvent.seq)
        )
        return Snapshot(
            obj=obj,
            transitions=[(t.from_state, t.to_state, t.event) for t in transitions],
            events=list(events),
        )


async def count_objects(sessionmaker: Sessionmaker, **where: Any) -> int:
    async with sessionmaker() as session:
        query = select(func.count()).select_from(ProcessingObject).filter_by(**where)
        return await session.scalar(query) or 0


async def outbox_rows(sessionmaker: Sessionmaker, ids: Sequence[int]) -> list[OutboxMessage]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids)).order_by(OutboxMessage.id))
        return list(rows)


def submit_command(
    operations: Sequence[str] = ("validate", "analyze"), identifier: str | None = None, **fields: Any
) -> SubmitObjectV1:
    return SubmitObjectV1(
        object_id=uuid4(),
        identifier=identifier or f"it-orch-{uuid4().hex}",
        operations=[Operation(op) for op in operations],
        **fields,
    )


def started(run: RunOperationV1) -> OperationStartedV1:
    return OperationStartedV1(
        object_id=run.object_id, task_id=run.task_id, operation=run.operation, index=run.index, executor_id=EXECUTOR_ID
    )


def completed(run: RunOperationV1, output_url: str | None = None, **fields: Any) -> OperationCompletedV1:
    values: dict[str, Any] = {
        "object_id": run.object_id,
        "task_id": run.task_id,
        "operation": run.operation,
        "index": run.index,
        "executor_id": EXECUTOR_ID,
        "s3_url": f"s3://artifacts/{run.identifier}/{run.operation}_result.json",
        "output_url": output_url,
        "output_format": "json" if output_url else None,
        "duration_ms": 12.5,
    }
    return OperationCompletedV1(**(values | fields))


def not_started(run: RunOperationV1) -> OperationCancelledV1:
    return OperationCancelledV1(
        object_id=run.object_id, task_id=run.task_id, operation=run.operation, index=run.index, executor_id=EXECUTOR_ID
    )


def failed(run: RunOperationV1, error: str) -> OperationFailedV1:
    return OperationFailedV1(
        object_id=run.object_id,
        task_id=run.task_id,
        operation=run.operation,
        index=run.index,
        executor_id=EXECUTOR_ID,
        error=error,
    )


class Pipeline:
    """Drives objects on a database of their own, the way handlers and executors would."""

    def __init__(self, sessionmaker: Sessionmaker, database: Database, max_parallel_workers: int = 3) -> None:
        self.sessionmaker = sessionmaker
        self.database = database
        self.service = ObjectService(max_parallel_workers)
        self.submitted: list[UUID] = []

    async def send(self, command: SubmitObjectV1) -> Applied[CommandReplyV1]:
        self.submitted.append(command.object_id)
        return await apply(self.database, lambda uow: self.service.submit(uow, command))

    async def submit(self, operations: Sequence[str] = ("validate", "analyze"), **fields: Any) -> UUID:
        applied = await self.send(submit_command(operations, **fields))
        assert applied.result.outcome == "accepted"
        assert applied.result.object_id is not None
        return applied.result.object_id

    async def admit(self) -> Applied[int]:
        return await apply(self.database, self.service.admit)

    async def admit_one(self, object_id: UUID) -> RunOperationV1:
        """Admit, expecting exactly this object's first dispatch."""
        runs = [run for run in (await self.admit()).runs() if run.object_id == object_id]
        assert len(runs) == 1
        return runs[0]

    async def start(self, event: OperationStartedV1) -> Applied[None]:
        return await apply(self.database, lambda uow: self.service.operation_started(uow, event))

    async def complete(self, event: OperationCompletedV1) -> Applied[None]:
        return await apply(self.database, lambda uow: self.service.operation_completed(uow, event))

    async def fail(self, event: OperationFailedV1) -> Applied[None]:
        return await apply(self.database, lambda uow: self.service.operation_failed(uow, event))

    async def not_started(self, event: OperationCancelledV1) -> Applied[None]:
        return await apply(self.database, lambda uow: self.service.operation_cancelled(uow, event))

    async def cancel(self, object_id: UUID) -> Applied[CommandReplyV1]:
        return await apply(self.database, lambda uow: self.service.cancel(uow, CancelObjectV1(object_id=object_id)))

    async def retry(self, object_id: UUID) -> Applied[CommandReplyV1]:
        return await apply(self.database, lambda uow: self.service.retry(uow, RetryObjectV1(object_id=object_id)))

    async def finish_next(self, run: RunOperationV1, output_url: str | None = None) -> RunOperationV1 | None:
        """Start and complete `run`; return the chain's next step, as the executor goes on with it, if any."""
        await self.start(started(run))
        done = completed(run, output_url)
        assert (await self.complete(done)).runs() == []  # the next operation needs no command: it is in the chain
        following = run.following(done)
        if following is not None:
            obj = (await snapshot(self.sessionmaker, run.object_id)).obj
            assert obj.current_operation == following.operation
        return following


@pytest.fixture
async def shared(sessionmaker: Sessionmaker, database: Database) -> AsyncIterator[Pipeline]:
    """The session's shared database. Objects left queued are cancelled afterwards, so no admission elsewhere
    (another test's, or a service's) ever picks them up."""
    pipeline = Pipeline(sessionmaker, database)
    yield pipeline
    for object_id in pipeline.submitted:
        await pipeline.cancel(object_id)


@pytest.fixture
def isolated(isolated_sessionmaker: Sessionmaker, isolated_database: Database) -> Pipeline:
    return Pipeline(isolated_sessionmaker, isolated_database)


# --- submission ----------------------------------------------------------------------------------------------


async def test_submit_creates_a_queued_object_with_audit_event_and_outbox_rows(shared: Pipeline) -> None:
    command = submit_command(
        ["validate", "transform"],
        payload=[{"a": 1}],
        options={"validate": {"required": ["a"]}},
        metadata={"team": "qa"},
    )
    applied = await shared.send(command)

    reply = applied.result
    assert reply.outcome == "accepted"
    assert reply.command_id == command.message_id
    assert reply.object_id == command.object_id
    assert reply.identifier == command.identifier
    assert reply.state is ObjectState.QUEUED
    assert reply.task_id is not None
    assert applied.admission_needed

    snap = await snapshot(shared.sessionmaker, command.object_id)
    obj = snap.obj
    assert obj.state == "queued"
    assert obj.identifier == command.identifier
    assert obj.operations == ["validate", "transform"]
    assert obj.payload == [{"a": 1}]
    assert obj.options == {"validate": {"required": ["a"]}}
    assert obj.object_metadata == {"team": "qa"}
    assert obj.task_id == reply.task_id
    assert obj.attempt == 1
    assert obj.queued_at is not None
    assert obj.started_at is None
    assert obj.current_operation is None
    assert snap.transitions == [(None, "pending", "submit"), ("pending", "queued", "enqueue")]

    assert [(e.seq, e.change) for e in snap.events] == [(1, "state_changed")]
    assert snap.events[0].document["state"] == "queued"
    assert snap.events[0].document["progress"] == {"current": 0, "total": 2, "message": "Object queued for processing"}

    rows = await outbox_rows(shared.sessionmaker, [m.id for m in applied.outbox])
    assert [row.stream for row in rows] == [OBJECT_EVENTS]
    event = ObjectProgressedV1.model_validate_json(rows[0].body)
    assert (event.object_id, event.seq, event.change) == (command.object_id, 1, "state_changed")
    assert event.document.state is ObjectState.QUEUED
    assert event.document.model_dump(mode="json") == snap.events[0].document


async def test_submit_replies_exists_and_changes_nothing_when_identifier_is_taken(shared: Pipeline) -> None:
    first = submit_command()
    await shared.send(first)
    before = await snapshot(shared.sessionmaker, first.object_id)

    second = submit_command(["export"], identifier=first.identifier)
    applied = await shared.send(second)

    assert applied.result.outcome == "exists"
    assert applied.result.object_id == first.object_id
    assert applied.result.command_id == second.message_id
    assert applied.result.state is ObjectState.QUEUED
    assert applied.outbox == []
    assert not applied.admission_needed
    assert await count_objects(shared.sessionmaker, id=second.object_id) == 0
    after = await snapshot(shared.sessionmaker, first.object_id)
    assert after.obj.operations == ["validate", "analyze"]
    assert after.obj.task_id == before.obj.task_id
    assert after.transitions == before.transitions
    assert [e.seq for e in after.events] == [1]


async def test_submit_replies_accepted_without_new_rows_when_redelivered(shared: Pipeline) -> None:
    command = submit_command()
    first = await shared.send(command)
    again = await shared.send(command)

    assert again.result.outcome == "accepted"
    assert again.result.object_id == command.object_id
    assert again.result.task_id == first.result.task_id
    assert again.result.state is ObjectState.QUEUED
    assert again.outbox == []
    assert not again.admission_needed
    snap = await snapshot(shared.sessionmaker, command.object_id)
    assert len(snap.transitions) == 2
    assert [e.seq for e in snap.events] == [1]
    assert await count_objects(shared.sessionmaker, identifier=command.identifier) == 1


# --- admission -----------------------------------------------------------------------------------------------


async def test_admit_starts_at_most_the_cap_oldest_first_and_dispatches_their_first_operation(
    isolated_sessionmaker: Sessionmaker,
    isolated_database: Database,
) -> None:
    pipeline = Pipeline(isolated_sessionmaker, isolated_database, max_parallel_workers=2)
    # Identifiers sort against submission order, so only queued_at can explain the admission order.
    ids = [
        await pipeline.submit(["analyze", "export"], identifier=f"it-fifo-{9 - n}-{uuid4().hex[:6]}", payload={"n": n})
        for n in range(4)
    ]

    applied = await pipeline.admit()

    assert applied.result == 2
    runs = applied.runs()
    assert [run.object_id for run in runs] == ids[:2]
    states = [(await snapshot(isolated_sessionmaker, object_id)).obj.state for object_id in ids]
    assert states == ["processing", "processing", "queued", "queued"]
    for n, run in enumerate(runs):
        obj = (await snapshot(isolated_sessionmaker, run.object_id)).obj
        assert (run.operation, run.index, run.total) == (Operation.ANALYZE, 0, 2)
        assert run.then == [ChainedOperation(operation=Operation.EXPORT)]
        assert run.task_id == obj.task_id
        assert run.identifier == obj.identifier
        assert run.payload == {"n": n}
        assert run.data_url is None
        assert obj.current_operation == "analyze"
        assert obj.started_at is not None

    # The outbox rows in the database are the messages themselves, bound for the executors' stream.
    rows = await outbox_rows(isolated_sessionmaker, [m.id for m in applied.outbox])
    commands = [RunOperationV1.model_validate_json(row.body) for row in rows if row.stream == OPERATION_COMMANDS]
    assert commands == runs
    assert sorted(e.object_id for e in applied.progressed()) == sorted(ids[:2])

    assert (await pipeline.admit()).result == 0
    assert await count_objects(isolated_sessionmaker, state="processing") == 2


async def test_admit_dispatches_the_object_options_data_url_and_metadata(isolated: Pipeline) -> None:
    object_id = await isolated.submit(
        ["transform", "analyze"],
        source="s3://inbox/data.csv",
        data_format="csv",
        options={"transform": {"steps": None}, "analyze": {"top": 3}},
        metadata={"k": "v"},
    )
    run = await isolated.admit_one(object_id)
    assert run.operation == Operation.TRANSFORM
    assert run.data_url == "s3://inbox/data.csv"
    assert run.data_format == "csv"
    assert run.options == {"steps": None}
    assert run.metadata == {"k": "v"}
    assert run.then == [ChainedOperation(operation=Operation.ANALYZE, options={"top": 3})]


@pytest.mark.parametrize(
    "payload",
    [
        {"big": 2**70, "exact": 12345678901234567890, "float": 0.1, "text": "ü €", "nested": [[], {}, None]},
        [1, "two", 3.5, True],
        None,
    ],
    ids=["integers-beyond-64-bits", "list", "none"],
)
async def test_the_payload_reaches_the_executor_exactly_as_submitted(isolated: Pipeline, payload: Any) -> None:
    object_id = await isolated.submit(["validate"], payload=payload)
    assert (await isolated.admit_one(object_id)).payload == payload
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.payload == payload


async def test_admit_fills_only_the_free_slots(isolated: Pipeline) -> None:
    for _ in range(3):
        await isolated.submit()
    assert (await isolated.admit()).result == 3
    late = await isolated.submit()
    assert (await isolated.admit()).result == 0
    assert (await snapshot(isolated.sessionmaker, late)).obj.state == "queued"


async def test_admit_never_exceeds_the_cap_when_admissions_run_concurrently(
    isolated_sessionmaker: Sessionmaker,
    isolated_database: Database,
) -> None:
    pipeline = Pipeline(isolated_sessionmaker, isolated_database, max_parallel_workers=3)
    for _ in range(10):
        await pipeline.submit()

    results = await asyncio.gather(*(pipeline.admit() for _ in range(4)))

    assert sum(applied.result for applied in results) == 3
    dispatched = [run.object_id for applied in results for run in applied.runs()]
    assert len(dispatched) == len(set(dispatched)) == 3
    assert await count_objects(isolated_sessionmaker, state="processing") == 3
    assert await count_objects(isolated_sessionmaker, state="queued") == 7


async def test_admit_waits_for_a_concurrent_admission_to_commit(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database
) -> None:
    pipeline = Pipeline(isolated_sessionmaker, isolated_database, max_parallel_workers=2)
    for _ in range(4):
        await pipeline.submit()

    async with isolated_database.transaction() as connection:
        uow = UnitOfWork(connection)
        assert await pipeline.service.admit(uow) == 2
        await uow.flush()
        # The first admission holds its transaction open: a second one must not decide until it commits.
        second = asyncio.create_task(pipeline.admit())
        await asyncio.sleep(0.3)
        assert not second.done()
    assert (await asyncio.wait_for(second, timeout=10)).result == 0
    assert await count_objects(isolated_sessionmaker, state="processing") == 2


async def test_a_full_cap_is_seen_without_waiting_for_the_admission_lock(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database
) -> None:
    pipeline = Pipeline(isolated_sessionmaker, isolated_database, max_parallel_workers=2)
    for _ in range(3):
        await pipeline.submit()
    assert (await pipeline.admit()).result == 2

    async with isolated_database.transaction() as connection:
        await ObjectRepository(connection).lock_admission()  # held for as long as this block runs
        # The cap is full: the look says so at once instead of queueing behind the lock (it would wait forever).
        applied = await asyncio.wait_for(pipeline.admit(), timeout=10)
    assert applied.result == 0
    assert await count_objects(isolated_sessionmaker, state="queued") == 1


# --- results -------------------------------------------------------------------------------------------------


async def test_a_completion_with_no_start_reported_records_when_the_operation_began(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate"], payload={"a": 1})
    run = await isolated.admit_one(object_id)

    done = completed(run, duration_ms=40.0)  # a short operation: the executor reported no start
    applied = await isolated.complete(done)

    assert [e.change for e in applied.progressed()] == ["operation_completed", "state_changed"]
    status = (await snapshot(isolated.sessionmaker, object_id)).obj.operations_status["validate"]
    assert status["started_at"] == (done.occurred_at - timedelta(milliseconds=40)).isoformat()
    assert status["completed"] is True


async def test_a_completion_that_names_when_its_run_began_records_that(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate"], payload={"a": 1})
    run = await isolated.admit_one(object_id)
    began = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # an artifact found stored: its run began long ago

    await isolated.complete(completed(run, duration_ms=40.0, started_at=began))

    status = (await snapshot(isolated.sessionmaker, object_id)).obj.operations_status["validate"]
    assert status["started_at"] == began.isoformat()


async def test_results_move_the_object_through_its_operations_and_complete_it(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate", "transform", "analyze"], payload=[{"A": " x "}])
    run = await isolated.admit_one(object_id)
    assert (run.operation, run.index) == (Operation.VALIDATE, 0)

    start = started(run)
    applied = await isolated.start(start)
    snap = await snapshot(isolated.sessionmaker, object_id)
    status = snap.obj.operations_status["validate"]
    assert status == {"completed": False, "started_at": start.occurred_at.isoformat(), "executor_id": EXECUTOR_ID}
    assert [e.change for e in applied.progressed()] == ["operation_started"]
    assert applied.runs() == []

    done = completed(run)
    applied = await isolated.complete(done)
    assert applied.runs() == []  # the executor goes on with transform, the next in the command's chain
    transform = run.following(done)
    assert transform is not None
    assert (transform.operation, transform.index, transform.total) == (Operation.TRANSFORM, 1, 3)
    assert transform.task_id == run.task_id
    assert transform.data_url is None
    assert [e.change for e in applied.progressed()] == ["operation_completed"]
    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "processing"
    assert snap.obj.current_operation == "transform"
    assert snap.obj.operations_status["validate"]["completed"] is True
    assert snap.obj.operations_status["validate"]["s3_url"].endswith("/validate_result.json")

    # transform's output becomes the data the following operations read.
    output_url = f"s3://artifacts/{transform.identifier}/transform_output.json"
    analyze = await isolated.finish_next(transform, output_url=output_url)
    assert analyze is not None
    assert (analyze.operation, analyze.index) == (Operation.ANALYZE, 2)
    assert analyze.data_url == output_url
    assert analyze.data_format == "json"

    await isolated.start(started(analyze))
    applied = await isolated.complete(completed(analyze))
    assert applied.runs() == []
    assert applied.admission_needed
    assert [e.change for e in applied.progressed()] == ["operation_completed", "state_changed"]

    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "completed"
    assert snap.obj.finished_at is not None
    assert snap.transitions == [
        (None, "pending", "submit"),
        ("pending", "queued", "enqueue"),
        ("queued", "processing", "start"),
        ("processing", "completed", "complete"),
    ]
    assert [e.seq for e in snap.events] == list(range(1, len(snap.events) + 1))
    final = snap.events[-1].document
    assert final["state"] == "completed"
    assert final["progress"] == {"current": 3, "total": 3, "message": "All operations completed"}
    assert set(final["s3_artifacts"]) == {"validate", "transform", "analyze"}


async def test_started_result_is_applied_once_when_delivered_twice(isolated: Pipeline) -> None:
    object_id = await isolated.submit()
    run = await isolated.admit_one(object_id)
    event = started(run)
    await isolated.start(event)
    before = await snapshot(isolated.sessionmaker, object_id)

    applied = await isolated.start(event)

    assert applied.outbox == []
    after = await snapshot(isolated.sessionmaker, object_id)
    assert [e.seq for e in after.events] == [e.seq for e in before.events]


async def test_completed_result_changes_nothing_when_duplicated(isolated: Pipeline, statements: Statements) -> None:
    object_id = await isolated.submit(["validate", "analyze", "export"])
    run = await isolated.admit_one(object_id)
    event = completed(run)
    first = await isolated.complete(event)
    assert [e.change for e in first.progressed()] == ["operation_completed"]
    before = await snapshot(isolated.sessionmaker, object_id)
    writes = statements.watch(lambda sql: sql == WRITE)

    again = await isolated.complete(event)

    assert writes == [], "nothing changed, so nothing is written"
    assert again.outbox == []
    assert not again.admission_needed
    after = await snapshot(isolated.sessionmaker, object_id)
    assert after.obj.current_operation == before.obj.current_operation == "analyze"
    assert after.obj.operations_status == before.obj.operations_status
    assert after.obj.event_seq == before.obj.event_seq
    assert len(after.events) == len(before.events)


@pytest.mark.parametrize(
    "stale",
    [
        pytest.param({"task_id": uuid4()}, id="other-task"),
        pytest.param({"operation": Operation.EXPORT}, id="not-the-current-operation"),
    ],
)
async def test_completed_result_changes_nothing_when_stale(isolated: Pipeline, stale: dict[str, Any]) -> None:
    object_id = await isolated.submit(["validate", "export"])
    run = await isolated.admit_one(object_id)
    before = await snapshot(isolated.sessionmaker, object_id)

    applied = await isolated.complete(completed(run, **stale))

    assert applied.outbox == []
    after = await snapshot(isolated.sessionmaker, object_id)
    assert after.obj.state == "processing"
    assert after.obj.current_operation == "validate"
    assert after.obj.operations_status == before.obj.operations_status
    assert len(after.events) == len(before.events)
    # The genuine result still applies afterwards.
    await isolated.complete(completed(run))
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.current_operation == "export"


async def test_a_result_ahead_of_its_objects_earlier_one_waits_for_it(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate", "transform", "analyze"])
    validate = await isolated.admit_one(object_id)
    transform = validate.following(completed(validate))
    assert transform is not None
    before = await snapshot(isolated.sessionmaker, object_id)

    # transform's result, read before validate's was applied (by another instance, or after a failure).
    with pytest.raises(ResultAheadError):
        await isolated.complete(completed(transform))

    after = await snapshot(isolated.sessionmaker, object_id)
    assert after.obj.current_operation == "validate"
    assert after.obj.operations_status == before.obj.operations_status
    assert len(after.events) == len(before.events)
    # Once validate's result is applied, transform's applies.
    await isolated.complete(completed(validate))
    await isolated.complete(completed(transform))
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.current_operation == "analyze"


async def test_failed_result_changes_nothing_when_stale(isolated: Pipeline) -> None:
    object_id = await isolated.submit()
    run = await isolated.admit_one(object_id)
    applied = await isolated.fail(failed(run.model_copy(update={"task_id": uuid4()}), "boom"))
    assert applied.outbox == []
    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "processing"
    assert snap.obj.error_message is None


async def test_failed_result_fails_the_object_with_its_error_message(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate", "analyze"])
    run = await isolated.admit_one(object_id)

    applied = await isolated.fail(failed(run, "validation failed: $[0].id: required field is missing or null"))

    assert applied.runs() == []
    assert applied.admission_needed
    snap = await snapshot(isolated.sessionmaker, object_id)
    message = "operation 'validate' failed: validation failed: $[0].id: required field is missing or null"
    assert snap.obj.state == "failed"
    assert snap.obj.error_message == message
    assert snap.obj.finished_at is not None
    assert snap.obj.operations_status["validate"]["completed"] is False
    assert "required field is missing" in snap.obj.operations_status["validate"]["error"]
    assert snap.transitions[-1] == ("processing", "failed", "fail")
    [event] = applied.progressed()
    assert event.document.state is ObjectState.FAILED
    assert event.document.error_message == message
    async with isolated.sessionmaker() as session:
        detail = await session.scalar(
            select(ObjectTransition.detail).where(
                ObjectTransition.object_id == object_id, ObjectTransition.to_state == "failed"
            )
        )
    assert detail == message


async def test_a_failure_quoting_a_nul_character_is_recorded(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate"])
    run = await isolated.admit_one(object_id)

    # An error that quotes the data it met: PostgreSQL would refuse the NUL, and the failure could never be applied.
    await isolated.fail(failed(run, "bad value 'a\x00b'"))

    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "failed"
    assert snap.obj.error_message == "operation 'validate' failed: bad value 'a\ufffdb'"


async def test_failure_frees_a_slot_for_the_next_queued_object(
    isolated_sessionmaker: Sessionmaker, isolated_database: Database
) -> None:
    pipeline = Pipeline(isolated_sessionmaker, isolated_database, max_parallel_workers=1)
    first = await pipeline.submit()
    second = await pipeline.submit()
    run = await pipeline.admit_one(first)
    assert (await pipeline.admit()).result == 0
    await pipeline.fail(failed(run, "boom"))
    assert (await pipeline.admit_one(second)).object_id == second


# --- cancel --------------------------------------------------------------------------------------------------


async def test_cancel_is_immediate_when_queued(shared: Pipeline) -> None:
    object_id = await shared.submit()

    applied = await shared.cancel(object_id)

    assert applied.result.outcome == "accepted"
    assert applied.result.state is ObjectState.CANCELLED
    assert not applied.admission_needed
    snap = await snapshot(shared.sessionmaker, object_id)
    assert snap.obj.state == "cancelled"
    assert snap.obj.finished_at is not None
    assert snap.transitions[-1] == ("queued", "cancelled", "cancel")
    assert [e.change for e in applied.progressed()] == ["state_changed"]
    assert applied.runs() == []


async def test_cancel_replies_not_found_when_no_such_object(shared: Pipeline) -> None:
    applied = await shared.cancel(uuid4())
    assert applied.result.outcome == "not_found"
    assert applied.outbox == []


async def test_cancel_of_processing_takes_effect_when_the_executor_stops_after_the_running_operation(
    isolated: Pipeline,
) -> None:
    object_id = await isolated.submit(["validate", "analyze"])
    run = await isolated.admit_one(object_id)

    applied = await isolated.cancel(object_id)

    assert applied.result.outcome == "accepted"
    assert applied.result.state is ObjectState.PROCESSING
    assert "running operation" in applied.result.detail
    assert [e.change for e in applied.progressed()] == ["cancel_requested"]
    assert applied.cancelled_runs == [(object_id, run.task_id)]  # the executor is told, after commit
    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "processing"
    assert snap.obj.cancel_requested is True

    again = await isolated.cancel(object_id)
    assert again.result.outcome == "accepted"
    assert again.outbox == []
    assert again.cancelled_runs == [(object_id, run.task_id)]  # told again: the first word may have been lost

    done = completed(run)
    result = await isolated.complete(done)

    # The executor, told, does not start analyze and says so; until then, the object waits for it.
    assert result.runs() == []
    assert result.cancelled_runs == [(object_id, run.task_id)]
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.state == "processing"
    analyze = run.following(done)
    assert analyze is not None

    stopped = await isolated.not_started(not_started(analyze))

    assert stopped.runs() == []
    assert stopped.admission_needed
    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "cancelled"
    assert snap.obj.operations_status["validate"]["completed"] is True
    assert snap.obj.operations_status["analyze"]["completed"] is False
    assert snap.transitions[-1] == ("processing", "cancelled", "cancel")
    # A copy of the report changes nothing.
    assert (await isolated.not_started(not_started(analyze))).outbox == []


async def test_cancel_of_processing_takes_effect_after_the_last_operation_if_the_executor_was_not_told(
    isolated: Pipeline,
) -> None:
    object_id = await isolated.submit(["validate", "analyze"])
    validate = await isolated.admit_one(object_id)
    await isolated.cancel(object_id)
    analyze = await isolated.finish_next(validate)  # Redis lost the word: the executor went on
    assert analyze is not None

    result = await isolated.complete(completed(analyze))

    assert result.admission_needed
    snap = await snapshot(isolated.sessionmaker, object_id)
    assert snap.obj.state == "cancelled"
    assert snap.transitions[-1] == ("processing", "cancelled", "cancel")


async def test_an_operation_not_started_without_a_cancellation_is_sent_again(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["validate", "analyze"])
    validate = await isolated.admit_one(object_id)
    analyze = await isolated.finish_next(validate)
    assert analyze is not None

    applied = await isolated.not_started(not_started(analyze))

    [again] = applied.runs()
    assert (again.operation, again.resent, again.then) == (Operation.ANALYZE, True, [])
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.state == "processing"


async def test_cancel_replies_conflict_when_completed(isolated: Pipeline) -> None:
    object_id = await isolated.submit(["enrich"])
    run = await isolated.admit_one(object_id)
    assert await isolated.finish_next(run) is None
    before = await snapshot(isolated.sessionmaker, object_id)

    applied = await isolated.cancel(object_id)

    assert applied.result.outcome == "conflict"
    assert applied.result.state is ObjectState.COMPLETED
    assert "completed" in applied.result.detail
    assert applied.outbox == []
    after = await snapshot(isolated.sessionmaker, object_id)
    assert after.obj.state == "completed"
    assert len(after.events) == len(before.events)


async def test_cancel_replies_conflict_when_already_cancelled(shared: Pipeline) -> None:
    object_id = await shared.submit()
    await shared.cancel(object_id)
    applied = await shared.cancel(object_id)
    assert applied.result.outcome == "conflict"
    assert applied.result.state is ObjectState.CANCELLED
    assert applied.outbox == []


# --- retry ---------------------------------------------------------------------------------------------------


async def test_retry_requeues_a_failed_object_and_resumes_after_its_completed_operations(
    isolated: Pipeline,
) -> None:
    object_id = await isolated.submit(["validate", "transform", "analyze"], payload=[{"a": 1}])
    validate = await isolated.admit_one(object_id)
    transform = await isolated.finish_next(validate)
    assert transform is not None
    await isolated.start(started(transform))
    await isolated.fail(failed(transform, "record 0: cannot cast field 'a' value 'x' to int"))
    before = (await snapshot(isolated.sessionmaker, object_id)).obj

    applied = await isolated.retry(object_id)

    assert applied.result.outcome == "accepted"
    assert applied.result.state is ObjectState.QUEUED
    assert applied.admission_needed
    snap = await snapshot(isolated.sessionmaker, object_id)
    obj = snap.obj
    assert obj.state == "queued"
    assert obj.task_id != before.task_id
    assert applied.result.task_id == obj.task_id
    assert obj.attempt == 2
    assert obj.error_message is None
    assert obj.finished_at is None
    assert obj.current_operation is None
    assert list(obj.operations_status) == ["validate"]
    assert obj.operations_status["validate"] == before.operations_status["validate"]
    assert snap.transitions[-1] == ("failed", "queued", "retry")

    run = await isolated.admit_one(object_id)

    assert (run.operation, run.index) == (Operation.TRANSFORM, 1)
    assert run.task_id == obj.task_id
    # A late result of the failed attempt is stale now.
    assert (await isolated.complete(completed(transform))).outbox == []
    analyze = await isolated.finish_next(run)
    assert analyze is not None
    assert analyze.operation == Operation.ANALYZE
    assert await isolated.finish_next(analyze) is None
    assert (await snapshot(isolated.sessionmaker, object_id)).obj.state == "completed"


async def test_retry_replies_conflict_when_not_failed(shared: Pipeline) -> None:
    object_id = await shared.submit()
    applied = await shared.retry(object_id)
    assert applied.result.outcome == "conflict"
    assert applied.result.state is ObjectState.QUEUED
    assert applied.outbox == []
    assert not applied.admission_needed


async def test_retry_replies_not_found_when_no_such_object(shared: Pipeline) -> None:
    applied = await shared.retry(uuid4())
    assert applied.result.outcome == "not_found"
