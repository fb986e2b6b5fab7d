"""Stream retention: trim every stream, never past an entry that some consumer group still needs.

XADD ... MAXLEN alone could drop entries still pending or not yet read. Instead, for a stream with consumer
groups, the cut is the oldest of: each group's oldest pending entry, and the entry after each group's
last-delivered id; a stream without groups (the public event stream) keeps `retention_ms` of history.
Streams are trimmed with MINID (approximate, so Redis trims whole nodes cheaply).
"""

import time

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.common.events.streams import CONSUMER_GROUPS, as_text


def _parse(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def safe_min_id(redis: Redis, stream: str, groups: tuple[str, ...], retention_ms: int) -> str:
    floor = (int(time.time() * 1000) - retention_ms, 0)
    if not groups:
        return f"{floor[0]}-0"
    cut = floor
    infos = {(as_text(info["name"])): info for info in await redis.xinfo_groups(stream)}
    for group in groups:
        info = infos.get(group)
        if info is None:  # the group is missing: keep everything until it is re-created and has read
            return "0-0"
        last = _parse(info["last-delivered-id"])
        cut = min(cut, (last[0], last[1] + 1))
        pending = await redis.xpending(stream, group)
        if pending["pending"]:
            cut = min(cut, _parse(pending["min"]))
    return f"{cut[0]}-{cut[1]}"


async def trim_streams(redis: Redis, retention_ms: int) -> dict[str, int]:
    """Trim every known stream as far as is safe. Returns the number of entries removed per stream."""
    removed: dict[str, int] = {}
    for stream, groups in CONSUMER_GROUPS.items():
        if not await redis.exists(stream):
            continue
        min_id = await safe_min_id(redis, stream, groups, retention_ms)
        removed[stream] = await redis.xtrim(stream, minid=min_id, approximate=True)
    return removed


async def prune_consumers(redis: Redis, idle_ms: int) -> int:
    """Delete consumers that hold nothing and have not read for `idle_ms`. Consumer names are instance ids
    (host names by default), so every restart in a container platform leaves one behind; without this, group
    metadata would grow for ever. A consumer that comes back is re-created by its next read."""
    deleted = 0
    for stream, groups in CONSUMER_GROUPS.items():
        if not await redis.exists(stream):
            continue
        for group in groups:
            try:
                consumers = await redis.xinfo_consumers(stream, group)
            except ResponseError:  # the group does not exist (yet)
                continue
            for consumer in consumers:
                if consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                    # A live consumer polls continuously (idle stays near zero), so one idle this long is gone.
                    await redis.xgroup_delconsumer(stream, group, as_text(consumer["name"]))
                    deleted += 1
    return deleted
