"""A malformed stream entry is dead-lettered with its reason, and the consumer keeps running."""

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from deploy.local.stack import Stack
from libs.common.events.streams import DATA_FIELD, DEAD_LETTERS, OBJECT_COMMANDS, OPERATION_COMMANDS, OPERATION_RESULTS
from tests.e2e.client import submit, wait_for

MALFORMED = {
    "unknown type": {DATA_FIELD: b'{"type": "no.such.type.v1", "object_id": 7}'},
    "not JSON": {DATA_FIELD: b"\x00\xffnot json at all"},
    "no data field": {"something": b"else"},
}


@pytest.mark.parametrize("stream", [OBJECT_COMMANDS, OPERATION_COMMANDS, OPERATION_RESULTS])
@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_entry_is_dead_lettered_and_the_consumer_goes_on(
    api: httpx.AsyncClient, stack: Stack, stream: str, body: dict[str, bytes]
) -> None:
    redis = Redis.from_url(stack.settings.redis_url)
    try:
        before = await redis.xlen(DEAD_LETTERS)
        entry_id = str(await redis.xadd(stream, body), "utf-8")  # type: ignore[arg-type]
        for _ in range(200):
            letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(DEAD_LETTERS, count=1000)  # type: ignore[assignment]
            if len(letters) > before and any(entry_id.encode() in fields[DATA_FIELD.encode()] for _, fields in letters):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{entry_id} on {stream} was not dead-lettered")
        accepted = await submit(api, ["validate"], payload={"still": "working"})
        assert (await wait_for(api, accepted["id"]))["state"] == "completed"
    finally:
        await redis.aclose()
