"""The Redis limits against a real Redis: the Lua scripts at and just past their bounds."""

import uuid

from redis.asyncio import Redis

from libs.common.ratelimit import RateLimiter, StreamSlots


async def test_rate_limit_allows_the_limit_then_refuses(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    key = f"test-{uuid.uuid4().hex}"
    decisions = [await limiter.hit(key, 5) for _ in range(6)]
    assert all(d is not None for d in decisions)
    assert [d.allowed for d in decisions if d] == [True] * 5 + [False]
    assert [d.remaining for d in decisions if d] == [4, 3, 2, 1, 0, 0]
    refused = decisions[-1]
    assert refused is not None
    assert 1 <= refused.retry_after_seconds <= 12


async def test_rate_limit_is_per_key_and_zero_means_none(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    a, b = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    for _ in range(2):
        await limiter.hit(a, 2)
    refused = await limiter.hit(a, 2)
    other = await limiter.hit(b, 2)
    assert refused is not None
    assert not refused.allowed
    assert other is not None
    assert other.allowed
    assert await limiter.hit(a, 0) is None


async def test_rate_limit_refills_over_the_period(redis: Redis) -> None:
    limiter = RateLimiter(redis, period_seconds=0.5)
    key = f"test-{uuid.uuid4().hex}"
    assert [(await limiter.hit(key, 2)).allowed for _ in range(3)] == [True, True, False]  # type: ignore[union-attr]
    import asyncio

    await asyncio.sleep(0.3)
    decision = await limiter.hit(key, 2)
    assert decision is not None
    assert decision.allowed


async def test_rate_limit_fails_open_without_redis() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        assert await RateLimiter(dead).hit("anything", 1) is None
        assert await StreamSlots(dead).acquire("anything", "s", 1)
    finally:
        await dead.aclose()


async def test_stream_slots_at_and_past_the_bound(redis: Redis) -> None:
    slots = StreamSlots(redis)
    key = f"test-{uuid.uuid4().hex}"
    assert await slots.acquire(key, "one", 2)
    assert await slots.acquire(key, "two", 2)
    assert not await slots.acquire(key, "three", 2)
    await slots.release(key, "one")
    assert await slots.acquire(key, "three", 2)


async def test_stream_slots_of_a_crashed_instance_expire(redis: Redis) -> None:
    import asyncio

    slots = StreamSlots(redis, ttl_seconds=0.3)
    key = f"test-{uuid.uuid4().hex}"
    assert await slots.acquire(key, "one", 1)
    assert not await slots.acquire(key, "two", 1)
    await asyncio.sleep(0.4)
    assert await slots.acquire(key, "two", 1)
