"""Fixtures shared by the integration tests."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from libs.common.broker import ensure_topology


@pytest.fixture
async def clean(redis: Redis) -> AsyncIterator[Redis]:
    """The test Redis database, emptied, with the streams and consumer groups every service expects."""
    await redis.flushdb()
    await ensure_topology(redis)
    yield redis
    await redis.flushdb()
