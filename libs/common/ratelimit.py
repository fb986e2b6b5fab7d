"""Limits shared by every instance through Redis: a request rate (GCRA) and a number of open streams.

Both are one Lua script each, so a check and its update are atomic, and both use Redis' clock, so instances
with skewed clocks agree. When Redis is unreachable they let the request through and log it: the API stays
available, unlimited, until Redis is back (availability over strictness).
"""

import math
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger()

# GCRA (generic cell rate algorithm): one key per caller holding its "theoretical arrival time" (tat), in ms.
# Each request moves tat forward by `interval` (period / limit); a request is refused while tat would run more
# than `period` ahead of now. So at most `limit` requests fit in any window of `period`, evenly refilled.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local period = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - period > now then
  return {0, new_tat - period - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now))
return {1, 0, new_tat - now}
"""

# Open streams of one caller: a sorted set of stream ids scored by when they expire. A stream renews its entry
# while it runs; the entry of a stream whose instance crashed expires on its own.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

_RENEW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    """Seconds until the caller's full allowance is back."""
    retry_after_seconds: int
    """When refused: seconds until one more request is allowed."""

    def headers(self) -> dict[str, str]:
        """The IETF draft's RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers), plus Retry-After on refusal."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


def gcra_decision(allowed: int, wait_ms: int, ahead_ms: int, limit: int, period_ms: int) -> RateDecision:
    """Reads the script's answer: `ahead_ms` is how far the caller's tat runs ahead of now."""
    interval = period_ms / limit
    remaining = 0 if not allowed else max(0, math.floor((period_ms - ahead_ms) / interval))
    return RateDecision(
        allowed=bool(allowed),
        limit=limit,
        remaining=remaining,
        reset_seconds=math.ceil(ahead_ms / 1000),
        retry_after_seconds=max(1, math.ceil(wait_ms / 1000)),
    )


class RateLimiter:
    def __init__(self, redis: Redis, period_seconds: float = 60.0) -> None:
        self.redis = redis
        self.period_ms = int(period_seconds * 1000)
        self._script = redis.register_script(_GCRA)

    async def hit(self, key: str, limit: int) -> RateDecision | None:
        """Counts one request of `key` against `limit` per period. None: no limit (0) or Redis unreachable."""
        if limit <= 0:
            return None
        try:
            allowed, wait_ms, ahead_ms = await self._script(
                keys=[f"ratelimit:{key}"], args=[self.period_ms, self.period_ms / limit]
            )
        except (RedisError, OSError) as exc:
            log.warning("ratelimit.unavailable", error=type(exc).__name__)
            return None
        return gcra_decision(int(allowed), int(wait_ms), int(ahead_ms), limit, self.period_ms)


class StreamSlots:
    """At most `limit` open streams per caller, across every instance."""

    def __init__(self, redis: Redis, ttl_seconds: float = 60.0) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self, key: str, stream_id: str, limit: int) -> bool:
        try:
            return bool(await self._acquire(keys=[f"streams:{key}"], args=[stream_id, limit, self.ttl_ms]))
        except (RedisError, OSError) as exc:
            log.warning("streams.limit_unavailable", error=type(exc).__name__)
            return True

    async def renew(self, key: str, stream_id: str) -> None:
        try:
            await self._renew(keys=[f"streams:{key}"], args=[stream_id, self.ttl_ms])
        except (RedisError, OSError) as exc:
            log.warning("streams.limit_unavailable", error=type(exc).__name__)

    async def release(self, key: str, stream_id: str) -> None:
        try:
            await self.redis.zrem(f"streams:{key}", stream_id)
        except (RedisError, OSError) as exc:
            log.warning("streams.limit_unavailable", error=type(exc).__name__)
