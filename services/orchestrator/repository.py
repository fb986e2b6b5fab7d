"""All SQL of the orchestrator, on asyncpg (see database.py). Callers own the transaction; nothing here commits.

The schema is libs/common/db/models.py's; tests/integration/orchestrator checks these statements against it.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

# Key of the transaction-level advisory lock that serialises admission across orchestrator instances.
ADMISSION_LOCK_KEY = 0x0BEC7_0001


@dataclass(slots=True, eq=False)
class ObjectRow:
    """A `processing_object` row as a transaction read it. The use cases change its attributes; the unit of work
    writes back the rows whose mutable columns changed (`changed`). JSON columns are compared by value, so a new
    dict must be assigned, never one changed in place (as with the ORM, which did not track that either)."""

    id: UUID
    tenant: str
    identifier: str
    state: str
    operations: list[str]
    payload: Any
    source: str | None
    data_format: str | None
    options: dict[str, Any]
    object_metadata: dict[str, Any]
    operations_status: dict[str, Any]
    data_url: str | None
    data_url_format: str | None
    current_operation: str | None
    error_message: str | None
    task_id: UUID
    attempt: int
    cancel_requested: bool
    event_seq: int
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    dispatched_at: datetime | None
    written: tuple[Any, ...] = field(default=(), repr=False)
    """The mutable columns as the database has them."""

    @classmethod
    def of(cls, record: asyncpg.Record) -> "ObjectRow":
        row = cls(*record)
        row.written = row.mutable()
        return row

    def mutable(self) -> tuple[Any, ...]:
        return _mutable(self)

    def changed(self) -> bool:
        return self.mutable() != self.written


# The columns a transaction may change (the rest are set once, by the INSERT), and their types, for the UPDATE.
MUTABLE_TYPES = {
    "state": "text",
    "operations_status": "jsonb",
    "data_url": "text",
    "data_url_format": "text",
    "current_operation": "text",
    "error_message": "text",
    "task_id": "uuid",
    "attempt": "int",
    "cancel_requested": "bool",
    "event_seq": "int",
    "updated_at": "timestamptz",
    "queued_at": "timestamptz",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "dispatched_at": "timestamptz",
}
MUTABLE = tuple(MUTABLE_TYPES)
_mutable = attrgetter(*MUTABLE)
_COLUMNS = [f.name for f in fields(ObjectRow) if f.name != "written"]
# In ObjectRow's order: ObjectRow.of takes a record by position.
SELECT_OBJECT = "SELECT " + ", ".join(
    "metadata AS object_metadata" if name == "object_metadata" else name for name in _COLUMNS
)
RETURNING_OBJECT = SELECT_OBJECT.replace("SELECT", "RETURNING", 1)
PROCESSING_COUNT = "(SELECT count(*) FROM processing_object WHERE state = 'processing')"

LOCK = f"{SELECT_OBJECT} FROM processing_object WHERE id = $1 FOR UPDATE"
LOCK_ALL = f"{SELECT_OBJECT} FROM processing_object WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
LOCK_BY_IDENTIFIER = f"{SELECT_OBJECT} FROM processing_object WHERE tenant = $1 AND identifier = $2 FOR UPDATE"
LOCK_ADMISSION = f"SELECT pg_advisory_xact_lock({ADMISSION_LOCK_KEY})"
# CASE evaluates its branch only when the condition holds, so a full cap takes no lock.
LOCK_ADMISSION_IF_BELOW = (
    f"SELECT CASE WHEN $1::int > {PROCESSING_COUNT} "
    f"THEN pg_advisory_xact_lock({ADMISSION_LOCK_KEY})::text = '' ELSE false END"
)
# SKIP LOCKED: an object being cancelled right now is passed over rather than waited for. The literal state lets
# the planner use the partial index of queued objects.
LOCK_OLDEST_QUEUED_WITHIN = (
    f"{SELECT_OBJECT} FROM processing_object WHERE state = 'queued' ORDER BY queued_at, id "
    f"LIMIT greatest($1::int - {PROCESSING_COUNT}, 0) FOR UPDATE SKIP LOCKED"
)
IN_FLIGHT_DISPATCHED_BEFORE = (
    "SELECT id, current_operation, task_id FROM processing_object "
    "WHERE state = 'processing' AND (dispatched_at IS NULL OR dispatched_at < $1)"
)
LOCK_IN_FLIGHT = (
    f"{SELECT_OBJECT} FROM processing_object WHERE id = ANY($1::uuid[]) AND state = 'processing' "
    "AND (dispatched_at IS NULL OR dispatched_at < $2) FOR UPDATE SKIP LOCKED"
)
INSERTED = {
    "id": "uuid",
    "tenant": "text",
    "identifier": "text",
    "operations": "text[]",
    "payload": "jsonb",
    "source": "text",
    "data_format": "text",
    "options": "jsonb",
    "object_metadata": "jsonb",
    "state": "text",
    "operations_status": "jsonb",
    "data_url": "text",
    "data_url_format": "text",
    "task_id": "uuid",
    "event_seq": "int",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "queued_at": "timestamptz",
}
"""The columns a submission sets (the rest take their defaults), and their types."""
# The rows as one JSON array, a column per key: one statement text for any number of rows, prepared once.
INSERT_ALL_NEW = (
    "INSERT INTO processing_object ("  # noqa: S608 - built from this module's column names, no input
    + ", ".join("metadata" if name == "object_metadata" else name for name in INSERTED)
    + ") SELECT "
    + ", ".join(INSERTED)
    + " FROM jsonb_to_recordset($1::jsonb) AS r("
    + ", ".join(f"{name} {kind}" for name, kind in INSERTED.items())
    + ") ON CONFLICT (tenant, identifier) DO NOTHING "
    + RETURNING_OBJECT
)
# A transaction's writes in one statement, one round trip: the rows it changed, its audit rows, its progress events
# and its outbox messages. Each set is an array (the changed rows one JSON array); an empty one writes nothing.
WRITE = (
    "WITH updated AS (UPDATE processing_object AS o SET "  # noqa: S608 - built from this module's column names
    + ", ".join(f"{name} = r.{name}" for name in MUTABLE)
    + " FROM jsonb_to_recordset($1::jsonb) AS r(id uuid, "
    + ", ".join(f"{name} {kind}" for name, kind in MUTABLE_TYPES.items())
    + """) WHERE o.id = r.id
    ), transitions AS (
        INSERT INTO object_transition (object_id, from_state, to_state, event, task_id, detail)
        SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[])
    ), events AS (
        INSERT INTO object_event (object_id, seq, change, document)
        SELECT object_id, seq, change, document::json
        FROM unnest($8::uuid[], $9::int[], $10::text[], $11::text[]) AS e(object_id, seq, change, document)
    )
    INSERT INTO outbox_message (stream, body)
    SELECT stream, body FROM unnest($12::text[], $13::text[]) WITH ORDINALITY AS o(stream, body, n) ORDER BY n
    RETURNING id
    """
)


class InFlight(NamedTuple):
    """A processing object's running operation, as the executors know it."""

    object_id: UUID
    operation: str
    task_id: UUID


@dataclass(slots=True)
class OutboxRow:
    """A message a transaction owes to Redis; `id` is set once it is written."""

    stream: str
    body: str
    id: int = 0


class ObjectRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def insert_if_new(self, values: dict[str, Any]) -> ObjectRow | None:
        """Insert unless the tenant's identifier is taken, and return the new object; None when it is taken. The
        unique index decides, so racing submissions cannot both win. `values` are keyed by attribute name
        (`object_metadata`, not the column's name)."""
        created = await self.insert_all_new([values])
        return created[0] if created else None

    async def insert_all_new(self, rows: Sequence[dict[str, Any]]) -> list[ObjectRow]:
        """`insert_if_new` for several objects, in one statement: returns the new ones (in no particular order)."""
        return [ObjectRow.of(record) for record in await self.connection.fetch(INSERT_ALL_NEW, rows)]

    async def lock(self, object_id: UUID) -> ObjectRow | None:
        record = await self.connection.fetchrow(LOCK, object_id)
        return ObjectRow.of(record) if record is not None else None

    async def lock_all(self, object_ids: Iterable[UUID]) -> list[ObjectRow]:
        """Lock the objects that exist of these, in id order: two transactions locking overlapping sets that way
        wait for each other instead of deadlocking."""
        return [ObjectRow.of(record) for record in await self.connection.fetch(LOCK_ALL, sorted(set(object_ids)))]

    async def lock_by_identifier(self, tenant: str, identifier: str) -> ObjectRow | None:
        record = await self.connection.fetchrow(LOCK_BY_IDENTIFIER, tenant, identifier)
        return ObjectRow.of(record) if record is not None else None

    async def lock_admission(self) -> None:
        # Counting `processing` rows and then admitting is a read-then-write: two instances doing it at once could
        # both see a free slot. The advisory lock serialises that short section across every orchestrator instance;
        # row locks alone cannot, because the rows that would conflict do not exist yet.
        await self.connection.execute(LOCK_ADMISSION)

    async def lock_admission_if_below(self, cap: int) -> bool:
        """Take the admission lock only if fewer than `cap` objects are processing, as this statement's snapshot sees
        them; False, at once, if not. One round trip for the unlocked look and the lock: with a backlog, every
        transaction that queues an object asks, and the cap is nearly always full. (A transaction that moved an object
        out of `processing` need not look: it takes the lock.)"""
        return bool(await self.connection.fetchval(LOCK_ADMISSION_IF_BELOW, cap))

    async def lock_oldest_queued_within(self, cap: int) -> list[ObjectRow]:
        """Lock the oldest queued objects, as many as there are free slots under `cap`. One statement: the count of
        `processing` rows is its LIMIT. Call it holding the admission lock, in a statement after the one that took
        it (the statement's snapshot must include every admission committed before the lock was ours), and with
        this transaction's own changes written."""
        return [ObjectRow.of(record) for record in await self.connection.fetch(LOCK_OLDEST_QUEUED_WITHIN, cap)]

    async def in_flight_dispatched_before(self, before: datetime) -> list[InFlight]:
        """Processing objects whose running operation was sent before `before` (read, not locked)."""
        records = await self.connection.fetch(IN_FLIGHT_DISPATCHED_BEFORE, before)
        return [InFlight(record["id"], record["current_operation"] or "", record["task_id"]) for record in records]

    async def lock_in_flight(self, ids: Sequence[UUID], dispatched_before: datetime) -> list[ObjectRow]:
        """Lock those of `ids` still processing and not re-sent since (by another instance): they are ours to re-send."""
        return [ObjectRow.of(record) for record in await self.connection.fetch(LOCK_IN_FLIGHT, ids, dispatched_before)]

    async def write(
        self,
        rows: Sequence[ObjectRow],
        transitions: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
        outbox: Sequence[OutboxRow],
    ) -> None:
        """Write the changed `rows` back and insert the audit rows, progress events and outbox messages, in one
        statement, and set the messages' ids."""
        if not (rows or transitions or events or outbox):
            return
        ids = await self.connection.fetch(
            WRITE,
            [{"id": row.id, **dict(zip(MUTABLE, row.mutable(), strict=True))} for row in rows],
            [row["object_id"] for row in transitions],
            [row["from_state"] for row in transitions],
            [row["to_state"] for row in transitions],
            [row["event"] for row in transitions],
            [row["task_id"] for row in transitions],
            [row["detail"] for row in transitions],
            [row["object_id"] for row in events],
            [row["seq"] for row in events],
            [row["change"] for row in events],
            [row["document"] for row in events],
            [message.stream for message in outbox],
            [message.body for message in outbox],
        )
        # RETURNING's order is not promised, but the ids are: the sequence numbers rows as they are inserted, in the
        # arrays' order (ORDER BY n).
        for message, message_id in zip(outbox, sorted(record["id"] for record in ids), strict=True):
            message.id = message_id
        for row in rows:
            row.written = row.mutable()


# The outbox, oldest first; `$1` limits it to some ids (NULL: any), `$2` to rows at least that many seconds old.
LOCK_OUTBOX = (
    "SELECT stream, body, id FROM outbox_message "
    "WHERE ($1::bigint[] IS NULL OR id = ANY($1)) "
    "AND ($2::float8 = 0 OR created_at < now() - make_interval(secs => $2::float8)) "
    "ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
)
DELETE_OUTBOX = "DELETE FROM outbox_message WHERE id = ANY($1::bigint[])"


class OutboxRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def lock_batch(self, ids: Sequence[int] | None, limit: int, min_age_seconds: float = 0.0) -> list[OutboxRow]:
        records = await self.connection.fetch(LOCK_OUTBOX, ids, min_age_seconds, limit)
        return [OutboxRow(*record) for record in records]

    async def delete(self, ids: Sequence[int]) -> None:
        await self.connection.execute(DELETE_OUTBOX, ids)
