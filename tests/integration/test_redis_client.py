"""Every service's Redis client waits for a free connection instead of failing when all are in use."""

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common import broker


async def _hold_each(client: Redis, count: int) -> None:
    # BLPOP on an empty list keeps its connection for the whole timeout: `count` of them need `count` connections.
    await asyncio.gather(*(client.blpop([f"test:pool:{n}"], timeout=0.2) for n in range(count)))


async def test_commands_beyond_the_pool_wait_for_a_connection(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "REDIS_MAX_CONNECTIONS", 2)
    client = broker.redis_client(redis_url)
    try:
        await _hold_each(client, 6)  # three rounds of two
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_pys_default_pool_fails_at_once_instead(redis_url: str) -> None:
    client = Redis.from_url(redis_url, max_connections=2)
    try:
        with pytest.raises(RedisConnectionError, match="Too many connections"):
            await _hold_each(client, 6)
    finally:
        await client.aclose()
