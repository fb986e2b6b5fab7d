"""The orchestrator's use cases. Each runs inside one transaction owned by the caller (handlers.py).

Every state change writes, in that same transaction: the new row state, an `object_transition` audit row,
an `object_event` (the numbered progress document) and outbox rows for every message it causes. The outbox
relay publishes those only after commit, so a crash can delay a message but never lose one.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
import structlog
from pydantic import BaseModel
from statemachine.exceptions import TransitionNotAllowed

from libs.common.domain import ObjectState
from libs.common.events import (
    CancelObjectV1,
    ChainedOperation,
    CommandReplyV1,
    ObjectProgressedV1,
    OperationCancelledV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationMessage,
    OperationStartedV1,
    RetryObjectV1,
    RunOperationV1,
    SubmitObjectV1,
)
from libs.common.events.streams import OBJECT_EVENTS, OPERATION_COMMANDS
from libs.common.progress import build_progress_document
from services.orchestrator.machine import next_state
from services.orchestrator.repository import InFlight, ObjectRepository, ObjectRow, OutboxRow

log = structlog.get_logger()

Change = Literal["state_changed", "operation_started", "operation_completed", "cancel_requested"]


def _now() -> datetime:
    return datetime.now(UTC)


class ResultAheadError(Exception):
    """A result arrived before the result of an earlier operation of its object was applied: it must wait (its
    message stays pending, to be applied after)."""

    def __init__(self, object_id: UUID, operation: str, current: str | None) -> None:
        super().__init__(f"the result of {operation!r} for object {object_id} came before that of {current!r}")


@dataclass
class UnitOfWork:
    """What one transaction did: the objects it changed and the rows it appends (audit, progress events, outbox
    messages), written together by `flush`, and whether a processing slot may be free."""

    connection: asyncpg.Connection
    transitions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    admission_needed: bool = False
    slot_freed: bool = False
    """An object left `processing` in this transaction: admission will find a slot, so it need not count first."""
    locked: dict[UUID, ObjectRow] = field(default_factory=dict)
    """Objects this transaction has locked or inserted, each as one ObjectRow: a row lock holds until commit, so a
    second lock needs no statement, and `flush` writes back those that changed."""
    inserted: dict[UUID, ObjectRow | None] = field(default_factory=dict)
    """Submissions this transaction has inserted up front: the new object, or None where the identifier was taken."""
    cancelled_runs: list[tuple[UUID, UUID]] = field(default_factory=list)
    """(object, task) of processing objects whose cancellation this transaction records: once it commits, the
    executor running the object's operations is told, so that it starts no further one."""

    _appended: tuple[int, int, int] = field(default=(0, 0, 0), init=False, repr=False)
    """How many transitions, events and outbox rows are written (a flush writes only the rest)."""

    @cached_property
    def objects(self) -> ObjectRepository:
        return ObjectRepository(self.connection)

    def track(self, rows: Iterable[ObjectRow]) -> list[ObjectRow]:
        """The rows as this transaction knows them: one already held stands for a copy read again."""
        return [self.locked.setdefault(row.id, row) for row in rows]

    async def lock(self, object_id: UUID) -> ObjectRow | None:
        """The object, locked until this transaction ends; None if there is no such object."""
        obj = self.locked.get(object_id)
        if obj is None and (obj := await self.objects.lock(object_id)) is not None:
            self.locked[object_id] = obj
        return obj

    async def lock_all(self, object_ids: Iterable[UUID]) -> None:
        """Lock these objects up front, in one statement: a batch's use cases then find them locked."""
        self.track(await self.objects.lock_all(object_ids))

    def emit(self, stream: str, message: BaseModel) -> None:
        self.outbox.append(OutboxRow(stream, message.model_dump_json()))

    def _changed(self) -> list[ObjectRow]:
        return [row for row in self.locked.values() if row.changed()]

    async def write_changes(self) -> None:
        """Write back the objects changed so far, for a statement that must see them (admission counts them)."""
        if changed := self._changed():
            await self.objects.write(changed, (), (), ())

    async def flush(self) -> list[OutboxRow]:
        """Write back the changed objects and write the appended rows, in one statement (they commit with the
        transaction); returns the outbox rows, with their ids, for the relay."""
        transitions, events, outbox = self._appended
        await self.objects.write(
            self._changed(),
            self.transitions[transitions:],
            self.events[events:],
            self.outbox[outbox:],
        )
        self._appended = (len(self.transitions), len(self.events), len(self.outbox))
        return self.outbox


class ObjectService:
    def __init__(self, max_parallel_workers: int) -> None:
        self.max_parallel_workers = max_parallel_workers

    # --- commands from the gateway ---------------------------------------------------------------

    async def insert_all(self, uow: UnitOfWork, commands: Sequence[SubmitObjectV1]) -> None:
        """Insert the objects of several submissions in one statement, ahead of their `submit` use cases, which then
        find their row (or that their identifier was taken) in `uow.inserted`."""
        created = {
            obj.id: obj for obj in uow.track(await uow.objects.insert_all_new([self._new_row(c) for c in commands]))
        }
        for command in commands:
            uow.inserted[command.object_id] = created.get(command.object_id)

    async def submit(self, uow: UnitOfWork, command: SubmitObjectV1) -> CommandReplyV1:
        if command.object_id in uow.inserted:
            # Taken out: a second copy of this command in the same batch finds the row as any redelivery does.
            obj = uow.inserted.pop(command.object_id)
        else:
            obj = await uow.objects.insert_if_new(self._new_row(command))
            if obj is not None:
                uow.track([obj])
        if obj is None:
            # The identifier is taken. If it is taken by this very command (a redelivery), it was accepted.
            existing = await uow.objects.lock_by_identifier(command.tenant, command.identifier)
            if existing is None:  # pragma: no cover - the conflicting row cannot be deleted
                msg = f"object {command.identifier!r} vanished during submission"
                raise RuntimeError(msg)
            # As this transaction has it: an earlier use case of the batch may have changed it (a retry, say).
            existing = uow.track([existing])[0]
            outcome: Literal["accepted", "exists"] = "accepted" if existing.id == command.object_id else "exists"
            return self._reply(command, outcome, existing)
        self._audit(uow, obj, None, "submit", to_state=ObjectState.PENDING.value)
        self._audit(uow, obj, ObjectState.PENDING.value, "enqueue")
        self._append_event(uow, obj, "state_changed")
        uow.admission_needed = True
        log.info("object.submitted", object_id=str(obj.id), identifier=obj.identifier, operations=obj.operations)
        return self._reply(command, "accepted", obj)

    async def cancel(self, uow: UnitOfWork, command: CancelObjectV1) -> CommandReplyV1:
        obj = await uow.lock(command.object_id)
        if obj is None or obj.tenant != command.tenant:  # another tenant's object does not exist for this one
            return self._reply(command, "not_found", None, "no object with this id")
        state = ObjectState(obj.state)
        if state is ObjectState.PROCESSING:
            # The running operation is not interrupted. The executor, told, starts no further one and says so, and
            # that moves the object to cancelled (see operation_cancelled).
            if not obj.cancel_requested:
                obj.cancel_requested = True
                self._record_change(uow, obj, "cancel_requested")
            uow.cancelled_runs.append((obj.id, obj.task_id))
            return self._reply(
                command, "accepted", obj, "cancellation requested; it takes effect when the running operation ends"
            )
        if state in (ObjectState.PENDING, ObjectState.QUEUED):
            self._transition(uow, obj, "cancel")
            obj.finished_at = _now()
            self._record_change(uow, obj, "state_changed")
            return self._reply(command, "accepted", obj, "cancelled")
        return self._reply(command, "conflict", obj, f"an object in state '{state}' cannot be cancelled")

    async def retry(self, uow: UnitOfWork, command: RetryObjectV1) -> CommandReplyV1:
        obj = await uow.lock(command.object_id)
        if obj is None or obj.tenant != command.tenant:
            return self._reply(command, "not_found", None, "no object with this id")
        if obj.state != ObjectState.FAILED:
            return self._reply(
                command, "conflict", obj, f"only failed objects can be retried; this one is '{obj.state}'"
            )
        self._transition(uow, obj, "retry", detail=obj.error_message)
        obj.task_id = uuid4()
        obj.attempt += 1
        obj.error_message = None
        obj.cancel_requested = False
        obj.current_operation = None
        obj.queued_at = _now()
        obj.finished_at = None
        # Completed operations keep their artifacts and are not run again; the rest start afresh.
        obj.operations_status = {op: status for op, status in obj.operations_status.items() if status.get("completed")}
        self._record_change(uow, obj, "state_changed")
        uow.admission_needed = True
        return self._reply(command, "accepted", obj, "queued for retry")

    # --- results from executors ----------------------------------------------------------------

    async def operation_started(self, uow: UnitOfWork, event: OperationStartedV1) -> None:
        obj = await self._lock_for_result(uow, event)
        if obj is None:
            return
        status = dict(obj.operations_status.get(event.operation, {}))
        if status.get("started_at"):
            return
        status.update(completed=False, started_at=event.occurred_at.isoformat(), executor_id=event.executor_id)
        obj.operations_status = {**obj.operations_status, event.operation: status}
        self._record_change(uow, obj, "operation_started")

    async def operation_completed(self, uow: UnitOfWork, event: OperationCompletedV1) -> None:
        obj = await self._lock_for_result(uow, event)
        if obj is None:
            return
        status = dict(obj.operations_status.get(event.operation, {}))
        if "started_at" not in status:  # short operations report no start (the executor's STARTED_REPORT_DELAY_MS)
            began = event.started_at or event.occurred_at - timedelta(milliseconds=event.duration_ms)
            status["started_at"] = began.isoformat()
        status.update(
            completed=True,
            s3_url=event.s3_url,
            completed_at=event.occurred_at.isoformat(),
            duration_ms=round(event.duration_ms, 3),
            executor_id=event.executor_id,
        )
        obj.operations_status = {**obj.operations_status, event.operation: status}
        if event.output_url:
            obj.data_url = event.output_url
            obj.data_url_format = event.output_format
        # The executor that ran this operation goes on with the next one (the command's `then`), so it is the
        # current one from now on, and the event carries that document (short operations report no start of their
        # own; see the executor's STARTED_REPORT_DELAY_MS). After the last one, a second event follows with the
        # final state.
        following = self._pending_operations(obj)
        if following:
            self._make_current(obj, following[0])
            obj.dispatched_at = _now()  # handed over now: the in-flight check counts from here
            if obj.cancel_requested:  # told again: the first word may have been lost with Redis
                uow.cancelled_runs.append((obj.id, obj.task_id))
        self._record_change(uow, obj, "operation_completed")
        if not following:
            self._finish(uow, obj, "cancel" if obj.cancel_requested else "complete")

    async def operation_cancelled(self, uow: UnitOfWork, event: OperationCancelledV1) -> None:
        """The executor did not start the object's next operation: its cancellation was requested."""
        obj = await self._lock_for_result(uow, event)
        if obj is None:
            return
        if obj.cancel_requested:
            self._finish(uow, obj, "cancel")
            return
        # Only a cancellation sets the key the executor looked at, and it is the run's own: this cannot happen, but
        # if it did, the object must not wait forever for an operation nobody runs.
        log.warning("result.cancelled_without_request", object_id=str(obj.id), operation=event.operation)
        self._dispatch_remaining(uow, obj, resent=True)

    async def operation_failed(self, uow: UnitOfWork, event: OperationFailedV1) -> None:
        obj = await self._lock_for_result(uow, event)
        if obj is None:
            return
        status = dict(obj.operations_status.get(event.operation, {}))
        status.update(completed=False, error=event.error, executor_id=event.executor_id)
        obj.operations_status = {**obj.operations_status, event.operation: status}
        obj.error_message = f"operation '{event.operation}' failed: {event.error}"
        self._finish(uow, obj, "fail", detail=obj.error_message)

    # --- admission -------------------------------------------------------------------------------

    async def admit(self, uow: UnitOfWork) -> int:
        """Move the oldest queued objects to processing while fewer than the cap are processing, everywhere."""
        # The lock only when a slot looks free: with a backlog, every submission asks and the cap is nearly always
        # full. A look that misses a slot freed by a concurrent transaction loses nothing: that transaction admits.
        # (A transaction that freed a slot itself need not look: it would find the slot.)
        # Only _finish lowers the count of processing objects, and it sets slot_freed: the look needs none of this
        # transaction's changes written, the LIMIT below needs all of them.
        if uow.slot_freed:
            await uow.objects.lock_admission()
        elif not await uow.objects.lock_admission_if_below(self.max_parallel_workers):
            return 0
        await uow.write_changes()
        admitted = uow.track(await uow.objects.lock_oldest_queued_within(self.max_parallel_workers))
        for obj in admitted:
            self._transition(uow, obj, "start")
            obj.started_at = _now()
            if self._dispatch_remaining(uow, obj):
                self._record_change(uow, obj, "state_changed")
            else:  # every operation already completed (a retry after the last one succeeded)
                self._record_change(uow, obj, "state_changed")
                self._finish(uow, obj, "complete")
        if admitted:
            log.info("objects.admitted", count=len(admitted), ids=[str(obj.id) for obj in admitted])
        return len(admitted)

    async def redispatch(self, uow: UnitOfWork, lost: Sequence[InFlight], dispatched_before: datetime) -> int:
        """Send again the operations not yet completed of processing objects whose command was lost (each `lost` names
        the operation found with no trace). Executors skip work whose artifact exists and the orchestrator ignores
        results it already applied, so a needless re-send costs a little and loses nothing. An object whose chain
        moved on meanwhile is left alone; one whose cancellation was requested is cancelled, as nothing runs for it."""
        running = {item.object_id: item.operation for item in lost}
        objects = [
            obj
            for obj in uow.track(await uow.objects.lock_in_flight(list(running), dispatched_before))
            if obj.current_operation == running[obj.id]
        ]
        for obj in objects:
            if obj.cancel_requested:  # nothing runs for it any more: the cancellation takes effect now
                self._finish(uow, obj, "cancel")
                continue
            self._dispatch_remaining(uow, obj, resent=True)
        if objects:
            log.warning("objects.redispatched", count=len(objects), ids=[str(obj.id) for obj in objects])
        return len(objects)

    # --- internals -------------------------------------------------------------------------------

    async def _lock_for_result(self, uow: UnitOfWork, event: OperationMessage) -> ObjectRow | None:
        """The object a result belongs to, or None when the result is stale or a duplicate and must change nothing.

        This is what makes results idempotent, without an inbox table: a result applies only to the object's
        current run (`task_id`) and current operation, and only until that operation is completed; the row lock
        serialises two copies of one result, so the second finds it applied. (A repeated `started` is caught by
        `operation_started`.)"""
        obj = await uow.lock(event.object_id)
        if obj is None:
            log.warning("result.unknown_object", object_id=str(event.object_id))
            return None
        if (
            obj.state == ObjectState.PROCESSING
            and obj.task_id == event.task_id
            and obj.current_operation in obj.operations
            and event.index > obj.operations.index(obj.current_operation)
        ):
            # A later operation of the chain reported before an earlier one was applied (its result is with another
            # orchestrator instance, or waits for a retry): results apply in order, so this one waits too.
            raise ResultAheadError(obj.id, event.operation, obj.current_operation)
        fresh = (
            obj.state == ObjectState.PROCESSING
            and obj.task_id == event.task_id
            and obj.current_operation == event.operation
            and not obj.operations_status.get(event.operation, {}).get("completed")
        )
        if not fresh:
            log.info(
                "result.stale",
                object_id=str(obj.id),
                operation=event.operation,
                state=obj.state,
                message=type(event).__name__,
            )
            return None
        return obj

    @staticmethod
    def _pending_operations(obj: ObjectRow) -> list[str]:
        return [op for op in obj.operations if not obj.operations_status.get(op, {}).get("completed")]

    @staticmethod
    def _make_current(obj: ObjectRow, operation: str) -> None:
        obj.current_operation = operation
        obj.operations_status = {**obj.operations_status, operation: {"completed": False}}

    def _dispatch_remaining(self, uow: UnitOfWork, obj: ObjectRow, *, resent: bool = False) -> bool:
        """Send the operations not yet completed, as one chain, to the executors. False when none is left."""
        pending = self._pending_operations(obj)
        if not pending:
            return False
        operation, *following = pending
        self._make_current(obj, operation)
        obj.dispatched_at = _now()
        uow.emit(
            OPERATION_COMMANDS,
            RunOperationV1(
                object_id=obj.id,
                task_id=obj.task_id,
                operation=operation,
                index=obj.operations.index(operation),
                total=len(obj.operations),
                identifier=obj.identifier,
                tenant=obj.tenant,
                data_url=obj.data_url,
                data_format=obj.data_url_format,  # type: ignore[arg-type]
                payload=obj.payload,
                metadata=obj.object_metadata,
                options=obj.options.get(operation, {}),
                resent=resent,
                then=[ChainedOperation(operation=op, options=obj.options.get(op, {})) for op in following],
            ),
        )
        return True

    def _finish(self, uow: UnitOfWork, obj: ObjectRow, event: str, detail: str | None = None) -> None:
        self._transition(uow, obj, event, detail=detail)
        obj.finished_at = _now()
        self._record_change(uow, obj, "state_changed")
        uow.admission_needed = True
        uow.slot_freed = True
        log.info("object.finished", object_id=str(obj.id), state=obj.state, error=obj.error_message)

    def _transition(self, uow: UnitOfWork, obj: ObjectRow, event: str, detail: str | None = None) -> None:
        before = obj.state
        try:
            obj.state = next_state(before, event)
        except TransitionNotAllowed as exc:  # callers check first; reaching here is a bug, not a client error
            msg = f"transition {event!r} not allowed from {before!r} for object {obj.id}"
            raise RuntimeError(msg) from exc
        self._audit(uow, obj, before, event, detail)

    @staticmethod
    def _new_row(command: SubmitObjectV1) -> dict[str, Any]:
        """A submitted object's row, keyed by attribute name (repository.INSERT_ALL_NEW's columns)."""
        now = _now()
        # The row goes in as its transaction leaves it: queued (the state machine's move from pending, decided
        # before the INSERT), with its first event numbered. Inserted pending, it needed an UPDATE after.
        queued = next_state(ObjectState.PENDING.value, "enqueue")
        return {
            "id": command.object_id,
            "tenant": command.tenant,
            "identifier": command.identifier,
            "state": queued,
            "queued_at": now,
            "event_seq": 1,
            "operations": list(command.operations),
            "payload": command.payload,
            "source": command.source,
            "data_format": command.data_format,
            "options": command.options,
            "object_metadata": command.metadata,
            "operations_status": {},
            "data_url": command.source,
            "data_url_format": command.data_format,
            "task_id": uuid4(),
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _audit(
        uow: UnitOfWork,
        obj: ObjectRow,
        before: str | None,
        event: str,
        detail: str | None = None,
        to_state: str | None = None,
    ) -> None:
        uow.transitions.append(
            {
                "object_id": obj.id,
                "from_state": before,
                "to_state": to_state or obj.state,
                "event": event,
                "task_id": obj.task_id,
                "detail": detail,
            }
        )

    @classmethod
    def _record_change(cls, uow: UnitOfWork, obj: ObjectRow, change: Change) -> None:
        obj.event_seq += 1
        obj.updated_at = _now()
        cls._append_event(uow, obj, change)

    @staticmethod
    def _append_event(uow: UnitOfWork, obj: ObjectRow, change: Change) -> None:
        """The object's progress event number `event_seq`, as it stands: stored, and sent to the subscribers."""
        document = build_progress_document(obj)
        uow.events.append(
            {"object_id": obj.id, "seq": obj.event_seq, "change": change, "document": document.model_dump_json()}
        )
        uow.emit(
            OBJECT_EVENTS, ObjectProgressedV1(object_id=obj.id, seq=obj.event_seq, change=change, document=document)
        )

    @staticmethod
    def _reply(
        command: SubmitObjectV1 | CancelObjectV1 | RetryObjectV1,
        outcome: Literal["accepted", "exists", "conflict", "not_found"],
        obj: ObjectRow | None,
        detail: str = "",
    ) -> CommandReplyV1:
        return CommandReplyV1(
            command_id=command.message_id,
            outcome=outcome,
            object_id=obj.id if obj else None,
            identifier=obj.identifier if obj else None,
            state=ObjectState(obj.state) if obj else None,
            task_id=obj.task_id if obj else None,
            detail=detail,
        )
