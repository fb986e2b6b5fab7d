"""Stream retention against a real Redis: trimming frees what every group is done with, and nothing else."""

import asyncio
from typing import Any

from redis.asyncio import Redis

from libs.common.events.streams import EXECUTOR_GROUP, OBJECT_EVENTS, OPERATION_COMMANDS
from libs.common.trim import prune_consumers, trim_streams

ENTRIES = 2_000  # several radix-tree nodes: approximate trimming removes whole nodes only


async def fill(redis: Redis, stream: str, count: int) -> list[bytes]:
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.xadd(stream, {"__data__": f'{{"n": {n}}}'})
        return list(await pipe.execute())


async def test_trimming_keeps_every_pending_and_unread_entry(clean: Redis) -> None:
    ids = await fill(clean, OPERATION_COMMANDS, ENTRIES)
    # The group reads the first 1,500, acknowledges all of them but one in the middle; 500 stay unread.
    read: Any = await clean.xreadgroup(EXECUTOR_GROUP, "executor-1", {OPERATION_COMMANDS: ">"}, count=1_500)
    read_ids = [entry_id for entry_id, _ in read[0][1]]
    still_pending = read_ids[1_000]
    await clean.xack(OPERATION_COMMANDS, EXECUTOR_GROUP, *[i for i in read_ids if i != still_pending])

    removed = await trim_streams(clean, retention_ms=0)

    assert removed[OPERATION_COMMANDS] > 0, "acknowledged entries are freed"
    entries: Any = await clean.xrange(OPERATION_COMMANDS)
    remaining = [entry_id for entry_id, _ in entries]
    assert still_pending in remaining
    assert set(ids[1_500:]) <= set(remaining), "unread entries are kept"
    assert remaining[0] <= still_pending
    assert len(remaining) < ENTRIES


async def test_trimming_keeps_everything_while_a_group_is_missing(clean: Redis) -> None:
    await fill(clean, OPERATION_COMMANDS, ENTRIES)
    await clean.xgroup_destroy(OPERATION_COMMANDS, EXECUTOR_GROUP)

    await trim_streams(clean, retention_ms=0)

    assert await clean.xlen(OPERATION_COMMANDS) == ENTRIES


async def test_the_public_stream_keeps_its_retention_window(clean: Redis) -> None:
    await fill(clean, OBJECT_EVENTS, ENTRIES)

    await trim_streams(clean, retention_ms=3_600_000)
    assert await clean.xlen(OBJECT_EVENTS) == ENTRIES, "everything is younger than an hour"

    await trim_streams(clean, retention_ms=0)
    assert await clean.xlen(OBJECT_EVENTS) < ENTRIES


async def test_consumers_that_left_are_pruned_and_holders_are_kept(clean: Redis) -> None:
    await fill(clean, OPERATION_COMMANDS, 2)
    await clean.xreadgroup(EXECUTOR_GROUP, "gone-idle", {OPERATION_COMMANDS: ">"}, count=1)
    await clean.xreadgroup(EXECUTOR_GROUP, "gone-holding", {OPERATION_COMMANDS: ">"}, count=1)
    idle: Any
    [idle] = await clean.xreadgroup(EXECUTOR_GROUP, "gone-idle", {OPERATION_COMMANDS: "0"}, count=1)
    await clean.xack(OPERATION_COMMANDS, EXECUTOR_GROUP, idle[1][0][0])

    assert await prune_consumers(clean, idle_ms=3_600_000) == 0, "both were active moments ago"
    await asyncio.sleep(0.05)
    assert await prune_consumers(clean, idle_ms=0) == 1

    consumers: Any = await clean.xinfo_consumers(OPERATION_COMMANDS, EXECUTOR_GROUP)
    names = {c["name"] for c in consumers}
    assert names == {b"gone-holding"}, "a consumer holding an entry is never deleted: the entry would be lost"
