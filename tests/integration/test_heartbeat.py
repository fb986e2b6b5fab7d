"""The heartbeat's running key against a real Redis: re-created when lost, never taken from another value."""

import asyncio

from redis.asyncio import Redis

from libs.common.events.streams import EXECUTOR_GROUP, OPERATION_COMMANDS, RUN_DONE
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
