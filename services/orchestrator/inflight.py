"""Finding operations whose command was lost: in flight in PostgreSQL, with no trace of it left in Redis.

PostgreSQL says which operation each processing object is running. Redis shows the work is alive when an
executor holds the operation's running key (and has not marked it done), when the command is pending in the executor group (a consumer
has it; the Reclaimer takes it over if that consumer died), or when the group has unread commands (it may be
queued there; nothing can be concluded until the executors catch up). Anything else was lost (Redis lost its
data, or an entry was deleted by hand) and is re-sent from PostgreSQL.
"""

from collections.abc import Sequence

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.common.events.streams import (
    DATA_FIELD,
    EXECUTOR_GROUP,
    OPERATION_COMMANDS,
    RUN_DONE,
    as_text,
    running_operation_key,
)
from services.orchestrator.repository import InFlight

PENDING_SCAN_LIMIT = 10_000


async def lost_operations(redis: Redis, in_flight: Sequence[InFlight]) -> list[InFlight]:
    """Those of `in_flight` whose running operation has no trace in Redis."""
    if not in_flight:
        return []
    try:
        groups = await redis.xinfo_groups(OPERATION_COMMANDS)
    except ResponseError:  # no stream: nothing is queued or pending
        groups = []
    group = next((g for g in groups if as_text(g["name"]) == EXECUTOR_GROUP), None)
    pending_objects: set[str] = set()
    if group is not None:
        unread = await redis.xrange(OPERATION_COMMANDS, f"({as_text(group['last-delivered-id'])}", "+", count=1)
        if unread:
            return []  # the executors are behind: a command may be waiting in the queue
        if group["pending"]:
            pending_objects = await _pending_object_ids(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for item in in_flight:
            pipe.get(running_operation_key(item.object_id, item.operation, item.task_id))
        holders = await pipe.execute()
    # A key saying RUN_DONE means the run finished but its result never arrived: that is lost work too.
    return [
        item
        for item, holder in zip(in_flight, holders, strict=True)
        if holder in (None, RUN_DONE) and str(item.object_id) not in pending_objects
    ]


async def _pending_object_ids(redis: Redis) -> set[str]:
    pending = await redis.xpending_range(OPERATION_COMMANDS, EXECUTOR_GROUP, "-", "+", PENDING_SCAN_LIMIT)
    async with redis.pipeline(transaction=False) as pipe:
        for entry in pending:
            pipe.xrange(OPERATION_COMMANDS, entry["message_id"], entry["message_id"])
        found = await pipe.execute()
    object_ids: set[str] = set()
    for entries in found:
        for _entry_id, fields in entries:
            try:
                object_ids.add(str(orjson.loads(fields[DATA_FIELD.encode()])["object_id"]))
            except (KeyError, TypeError, ValueError):
                continue  # a malformed entry; the Reclaimer dead-letters it
    return object_ids
