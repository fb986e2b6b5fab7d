"""The heartbeat's running key against a real Redis: re-created when lost, never taken from another value."""

import asyncio
from typing import cast

from redis.asyncio import Redis

from libs.common.events.streams import EXECUTOR_GROUP, OPERATION_COMMANDS, RUN_DONE, as_text
from libs.common.reclaim import heartbeat

KEY = "executor:running:test-heartbeat"


async def test_the_key_is_kept_recreated_and_never_taken_from_another_value(clean: Redis, redis_url: str) -> None:
    added = await clean.xadd(OPERATION_COMMANDS, {"__data__": "{}"})
    entry_id = added.decode() if isinstance(added, bytes) else added
    await clean.xreadgroup(EXECUTOR_GROUP, "executor-1", {OPERATION_COMMANDS: ">"})
    async with heartbeat(redis_url, OPERATION_COMMANDS, EXECUTOR_GROUP, "executor-1", entry_id, 0.1, (KEY, 5000)):
        await asyncio.sleep(0.35)
        assert await clean.get(KEY) == b"executor-1", "set while free"

        await clean.delete(KEY)  # as when Redis loses its data
        await asyncio.sleep(0.35)
        assert await clean.get(KEY) == b"executor-1", "re-created"

        await clean.set(KEY, RUN_DONE)  # the run was marked done: the heartbeat must not undo that
        await asyncio.sleep(0.35)
        assert await clean.get(KEY) == RUN_DONE


async def test_one_thread_keeps_every_running_entry_owned(clean: Redis, redis_url: str) -> None:
    ids = []
    for _ in range(2):
        added = await clean.xadd(OPERATION_COMMANDS, {"__data__": "{}"})
        ids.append(added.decode() if isinstance(added, bytes) else added)
    await clean.xreadgroup(EXECUTOR_GROUP, "executor-1", {OPERATION_COMMANDS: ">"})

    async def idle_ms() -> dict[str, int]:
        pending = await clean.xpending_range(OPERATION_COMMANDS, EXECUTOR_GROUP, min="-", max="+", count=10)
        return {as_text(cast(bytes, entry["message_id"])): int(entry["time_since_delivered"]) for entry in pending}

    # Beats every 0.1 s: an entry beaten is idle for well under a second, one not beaten for all the time since.
    async with heartbeat(redis_url, OPERATION_COMMANDS, EXECUTOR_GROUP, "executor-1", ids[0], 0.1):
        async with heartbeat(redis_url, OPERATION_COMMANDS, EXECUTOR_GROUP, "executor-1", ids[1], 0.1):
            await asyncio.sleep(1.5)
            idle = await idle_ms()
            assert idle[ids[0]] < 1000, idle
            assert idle[ids[1]] < 1000, idle
        await asyncio.sleep(1.5)
        idle = await idle_ms()
        assert idle[ids[0]] < 1000, ("still beaten after the other block ended", idle)
        assert idle[ids[1]] >= 1500, ("no longer beaten once its block ended", idle)
