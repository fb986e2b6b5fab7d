"""All SQL of the orchestrator. Callers own the transaction; nothing here commits."""

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Table,
    Text,
    Uuid,
    any_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    text,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db.models import OutboxMessage, ProcessingObject
from libs.common.domain import ObjectState

# Key of the transaction-level advisory lock that serialises admission across orchestrator instances.
ADMISSION_LOCK_KEY = 0x0BEC7_0001

# The tables, for Core statements where the ORM's unit of work would be pure overhead.
OUTBOX = cast(Table, OutboxMessage.__table__)
OBJECTS = cast(Table, ProcessingObject.__table__)

PROCESSING_COUNT = select(func.count()).where(OBJECTS.c.state == ObjectState.PROCESSING.value).scalar_subquery()

# The statements of every transaction, built once with their values as parameters: building one (its clauses, then
# its cache key) cost more CPU than running it, and an admission check runs with every submission.
_LOCKED = {"populate_existing": True}
LOCK = (
    select(ProcessingObject)
    .where(ProcessingObject.id == bindparam("id"))
    .with_for_update()
    .execution_options(**_LOCKED)
)
LOCK_ALL = (
    select(ProcessingObject)
    .where(ProcessingObject.id == any_(bindparam("ids", type_=ARRAY(Uuid))))
    .order_by(ProcessingObject.id)
    .with_for_update()
    .execution_options(**_LOCKED)
)
LOCK_BY_IDENTIFIER = (
    select(ProcessingObject)
    .where(ProcessingObject.tenant == bindparam("tenant"), ProcessingObject.identifier == bindparam("identifier"))
    .with_for_update()
    .execution_options(**_LOCKED)
)
LOCK_ADMISSION = select(func.pg_advisory_xact_lock(ADMISSION_LOCK_KEY))
# CASE evaluates its branch only when the condition holds, so a full cap takes no lock.
LOCK_ADMISSION_IF_BELOW = select(
    case(
        (
            bindparam("cap", type_=Integer) > PROCESSING_COUNT,
            cast_(func.pg_advisory_xact_lock(ADMISSION_LOCK_KEY), Text) == "",
        ),
        else_=False,
    )
)
# SKIP LOCKED: an object being cancelled right now is passed over rather than waited for.
LOCK_OLDEST_QUEUED_WITHIN = (
    select(ProcessingObject)
    .where(ProcessingObject.state == ObjectState.QUEUED.value)
    .order_by(ProcessingObject.queued_at, ProcessingObject.id)
    .limit(func.greatest(bindparam("cap", type_=Integer) - PROCESSING_COUNT, 0))
    .with_for_update(skip_locked=True)
    .execution_options(**_LOCKED)
)


INSERT_IF_NEW = (
    insert(ProcessingObject)
    .on_conflict_do_nothing(index_elements=[ProcessingObject.tenant, ProcessingObject.identifier])
    .returning(ProcessingObject)
)


class InFlight(NamedTuple):
    """A processing object's running operation, as the executors know it."""

    object_id: UUID
    operation: str
    task_id: UUID


class ObjectRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_if_new(self, values: dict[str, Any]) -> ProcessingObject | None:
        """Insert unless the tenant's identifier is taken, and return the new object; None when it is taken. The
        unique index decides, so racing submissions cannot both win. `values` are keyed by attribute name (an ORM
        bulk insert: `object_metadata`, not the column's name)."""
        created = await self.insert_all_new([values])
        return created[0] if created else None

    async def insert_all_new(self, rows: Sequence[dict[str, Any]]) -> Sequence[ProcessingObject]:
        """`insert_if_new` for several objects, in one statement: returns the new ones (in no particular order)."""
        # The values as parameters, not in the statement: the statement is then the same every time, and its
        # compiled form is cached (with .values(), every submission compiled a new one, payload included).
        created = await self.session.scalars(INSERT_IF_NEW, list(rows))
        return created.all()

    async def lock(self, object_id: UUID) -> ProcessingObject | None:
        return await self.session.scalar(LOCK, {"id": object_id})

    async def lock_all(self, object_ids: Iterable[UUID]) -> Sequence[ProcessingObject]:
        """Lock the objects that exist of these, in id order: two transactions locking overlapping sets that way
        wait for each other instead of deadlocking."""
        return (await self.session.scalars(LOCK_ALL, {"ids": sorted(set(object_ids))})).all()

    async def lock_by_identifier(self, tenant: str, identifier: str) -> ProcessingObject | None:
        return await self.session.scalar(LOCK_BY_IDENTIFIER, {"tenant": tenant, "identifier": identifier})

    async def lock_admission(self) -> None:
        # Counting `processing` rows and then admitting is a read-then-write: two instances doing it at once could
        # both see a free slot. The advisory lock serialises that short section across every orchestrator instance;
        # row locks alone cannot, because the rows that would conflict do not exist yet.
        await self.session.execute(LOCK_ADMISSION)

    async def lock_admission_if_below(self, cap: int) -> bool:
        """Take the admission lock only if fewer than `cap` objects are processing, as this statement's snapshot sees
        them; False, at once, if not. One round trip for the unlocked look and the lock: with a backlog, every
        transaction that queues an object asks, and the cap is nearly always full."""
        await self.session.flush()  # the count must see this transaction's own state changes
        connection = await self.session.connection()
        return bool(await connection.scalar(LOCK_ADMISSION_IF_BELOW, {"cap": cap}))

    async def lock_oldest_queued_within(self, cap: int) -> Sequence[ProcessingObject]:
        """Lock the oldest queued objects, as many as there are free slots under `cap`. One statement: the count of
        `processing` rows is its LIMIT. Call it holding the admission lock, and in a statement after the one that
        took it: the statement's snapshot must include every admission committed before the lock was ours."""
        await self.session.flush()  # the count must see this transaction's own state changes
        return (await self.session.scalars(LOCK_OLDEST_QUEUED_WITHIN, {"cap": cap})).all()

    async def in_flight_dispatched_before(self, before: datetime) -> Sequence[InFlight]:
        """Processing objects whose running operation was sent before `before` (read, not locked)."""
        result = await self.session.execute(
            select(ProcessingObject.id, ProcessingObject.current_operation, ProcessingObject.task_id).where(
                ProcessingObject.state == ObjectState.PROCESSING.value,
                or_(ProcessingObject.dispatched_at.is_(None), ProcessingObject.dispatched_at < before),
            )
        )
        return [InFlight(row.id, row.current_operation or "", row.task_id) for row in result]

    async def lock_in_flight(self, ids: Sequence[UUID], dispatched_before: datetime) -> Sequence[ProcessingObject]:
        """Lock those of `ids` still processing and not re-sent since (by another instance): they are ours to re-send."""
        result = await self.session.scalars(
            select(ProcessingObject)
            .where(
                ProcessingObject.id.in_(ids),
                ProcessingObject.state == ObjectState.PROCESSING.value,
                or_(ProcessingObject.dispatched_at.is_(None), ProcessingObject.dispatched_at < dispatched_before),
            )
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        return result.all()

    async def append(
        self, transitions: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]], outbox: Sequence[OutboxMessage]
    ) -> None:
        """Insert a transaction's audit rows, progress events and outbox messages in one statement, and set the
        messages' ids. Core, not the ORM unit of work: these rows are only ever appended, so tracking them would be
        pure overhead; and one statement of three inserts is one round trip instead of three."""
        if not (transitions or events or outbox):
            return
        connection = await self.session.connection()
        result = await connection.execute(
            APPEND,
            {
                "t_object": [row["object_id"] for row in transitions],
                "t_from": [row["from_state"] for row in transitions],
                "t_to": [row["to_state"] for row in transitions],
                "t_event": [row["event"] for row in transitions],
                "t_task": [row["task_id"] for row in transitions],
                "t_detail": [row["detail"] for row in transitions],
                "e_object": [row["object_id"] for row in events],
                "e_seq": [row["seq"] for row in events],
                "e_change": [row["change"] for row in events],
                "e_document": [row["document"] for row in events],
                "o_stream": [message.stream for message in outbox],
                "o_body": [message.body for message in outbox],
            },
        )
        # RETURNING's order is not promised, but the ids are: the sequence numbers rows as they are inserted, in the
        # arrays' order (ORDER BY n). (SQLAlchemy's insertmanyvalues matches rows to parameters the same way.)
        for message, message_id in zip(outbox, sorted(result.scalars()), strict=True):
            message.id = message_id


APPEND = text(
    """
    WITH transitions AS (
        INSERT INTO object_transition (object_id, from_state, to_state, event, task_id, detail)
        SELECT * FROM unnest(:t_object, :t_from, :t_to, :t_event, :t_task, :t_detail)
    ), events AS (
        INSERT INTO object_event (object_id, seq, change, document)
        SELECT object_id, seq, change, document::json
        FROM unnest(:e_object, :e_seq, :e_change, :e_document) AS e(object_id, seq, change, document)
    )
    INSERT INTO outbox_message (stream, body)
    SELECT stream, body FROM unnest(:o_stream, :o_body) WITH ORDINALITY AS o(stream, body, n) ORDER BY n
    RETURNING id
    """
).bindparams(
    *(
        bindparam(name, type_=ARRAY(item))
        for name, item in {
            "t_object": Uuid,
            "t_from": Text,
            "t_to": Text,
            "t_event": Text,
            "t_task": Uuid,
            "t_detail": Text,
            "e_object": Uuid,
            "e_seq": Integer,
            "e_change": Text,
            "e_document": Text,
            "o_stream": Text,
            "o_body": Text,
        }.items()
    )
)


class OutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_batch(
        self, ids: Sequence[int] | None, limit: int, min_age_seconds: float = 0.0
    ) -> Sequence[OutboxMessage]:
        query = select(OutboxMessage).order_by(OutboxMessage.id).limit(limit).with_for_update(skip_locked=True)
        if ids is not None:
            query = query.where(OutboxMessage.id.in_(ids))
        if min_age_seconds > 0:
            query = query.where(OutboxMessage.created_at < func.now() - timedelta(seconds=min_age_seconds))
        return (await self.session.scalars(query)).all()

    async def delete(self, ids: Sequence[int]) -> None:
        connection = await self.session.connection()
        # = ANY(array), not IN (...): one statement text for any number of ids, so it is prepared once.
        await connection.execute(
            delete(OUTBOX).where(OUTBOX.c.id == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger))))
        )
