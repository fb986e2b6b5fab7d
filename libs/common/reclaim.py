"""At-least-once delivery on Redis Streams: what FastStream leaves to us, in one place.

- `Reclaimer` takes over entries that a consumer left pending (it crashed, was killed, or its handler
  raised) once they have been idle for `idle_ms`, runs them through the same handler, and acknowledges them on
  success. XAUTOCLAIM counts deliveries; an entry delivered more than `max_deliveries` times is moved to the
  dead-letter stream with the reason, acknowledged, and reported to `on_dead` (so the object can fail).
- `heartbeat` keeps a long-running entry owned by its consumer (XCLAIM ... JUSTID resets its idle time without
  counting a delivery), so the idle timeout can be short: a dead consumer's work is taken over in seconds,
  and a live one's is never stolen.
"""

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from libs.common.events.streams import DATA_FIELD, DEAD_LETTERS, as_text

log = structlog.get_logger()

Handler = Callable[[bytes, str], Awaitable[None]]
"""Called with an entry's `__data__` and its entry id; raising leaves the entry pending for a later attempt."""
DeadHandler = Callable[[bytes, str], Awaitable[None]]

_RENEW_LOCK = """
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
    return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return false
"""
"""Set the lock to this consumer if it is free or already ours, in one step: a GET then a SET could overwrite
a value another writer put between them (the executor marking the run done)."""

LOCK_REFRESH_SECONDS = 1.0
"""How often a running operation re-asserts its `running_operation_key`."""
BEAT_TIMEOUT_SECONDS = 2.0


@dataclass
class Reclaimer:
    redis: Redis
    stream: str
    group: str
    consumer: str
    handler: Handler
    idle_ms: int
    max_deliveries: int
    maxlen: int
    on_dead: DeadHandler | None = None
    count: int = 10
    """Entries claimed per XAUTOCLAIM; 1 for consumers that process one entry at a time."""
    ready: Callable[[], Awaitable[bool]] | None = None
    """Claim nothing while this says the service cannot work (its database is down): deliveries would be spent."""

    async def run(self, interval: float) -> None:
        while True:
            try:
                if self.ready is None or await self.ready():
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reclaim.sweep_failed", stream=self.stream)
            await asyncio.sleep(interval)

    async def sweep(self) -> int:
        """Claim and process every entry idle for longer than idle_ms. Returns how many were claimed."""
        claimed = 0
        start = "0-0"
        while True:
            next_start, entries, *_ = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.idle_ms, start_id=start, count=self.count
            )
            for raw_id, fields in entries:
                claimed += 1
                await self._process(as_text(raw_id), fields)
            start = as_text(next_start)
            if start == "0-0":
                return claimed

    async def _process(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        deliveries = await self._deliveries(entry_id)
        body = fields.get(DATA_FIELD.encode()) if fields else None
        if body is None or deliveries > self.max_deliveries:
            reason = "entry has no data" if body is None else f"delivered {deliveries} times without success"
            await self.dead_letter(entry_id, body or b"", reason)
            if self.on_dead is not None and body is not None:
                await self.on_dead(body, reason)
            await self.redis.xack(self.stream, self.group, entry_id)
            return
        log.info("reclaim.retry", stream=self.stream, entry_id=entry_id, delivery=deliveries)
        try:
            await self.handler(body, entry_id)
        except Exception:
            log.exception("reclaim.handler_failed", stream=self.stream, entry_id=entry_id, delivery=deliveries)
            return
        await self.redis.xack(self.stream, self.group, entry_id)

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def dead_letter(self, entry_id: str, body: bytes, reason: str) -> None:
        await dead_letter(self.redis, self.stream, entry_id, self.consumer, body, reason, self.maxlen)


async def dead_letter(
    redis: Redis, stream: str, entry_id: str, consumer: str, body: bytes, reason: str, maxlen: int
) -> None:
    """Park an entry that can never succeed on the dead-letter stream, with the reason (the caller acknowledges it)."""
    record = {
        "stream": stream,
        "entry_id": entry_id,
        "consumer": consumer,
        "reason": reason[:2000],
        "body": body.decode("utf-8", "replace")[:65536],
    }
    await redis.xadd(DEAD_LETTERS, {DATA_FIELD: orjson.dumps(record)}, maxlen=maxlen, approximate=True)
    log.warning("message.dead_lettered", stream=stream, entry_id=entry_id, reason=reason[:200])


@contextlib.asynccontextmanager
async def heartbeat(
    redis_url: str,
    stream: str,
    group: str,
    consumer: str,
    entry_id: str,
    interval: float,
    lock: tuple[str, int] | None = None,
) -> AsyncIterator[None]:
    """Renew this consumer's ownership of `entry_id` every `interval` seconds while the block runs, and, when
    `lock` (key, ttl in ms) is given, keep that key set to this consumer while it is ours or free (so it is
    re-created if Redis lost it, and never taken from another holder).

    The beats come from a thread with its own connection: an operation that keeps the event loop busy for longer
    than the idle timeout (CPU-heavy validation, a plugin that never awaits) must not lose its entry for that. One
    thread per process beats for every block; entering and leaving one costs no thread of its own.
    """
    # The lock key is re-asserted more often than the entry is re-claimed: after Redis lost its data, the
    # orchestrator re-sends work it finds no holder for, and waits LOCK_REFRESH_SECONDS * 3 before it looks.
    tick = min(interval, LOCK_REFRESH_SECONDS) if lock is not None else interval
    beat = _Beat(stream, group, consumer, entry_id, interval, tick, lock)
    beater = _beater(redis_url)
    beater.add(beat)
    try:
        yield
    finally:
        beater.remove(beat)


@dataclass(eq=False)
class _Beat:
    stream: str
    group: str
    consumer: str
    entry_id: str
    interval: float
    tick: float
    lock: tuple[str, int] | None
    next_tick: float = 0.0
    next_claim: float = 0.0
    active: bool = True


class _Beater:
    """The thread that beats for every running block of a process (per Redis URL), started with the first."""

    def __init__(self, redis_url: str) -> None:
        # Timeouts, and one retry rather than redis-py's ten: one beat that hangs on a dead connection would hold
        # back every other block's beats (and the next tick tries again anyway).
        self._client = SyncRedis.from_url(
            redis_url,
            socket_timeout=BEAT_TIMEOUT_SECONDS,
            socket_connect_timeout=BEAT_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        self._renew = self._client.register_script(_RENEW_LOCK)
        self._beats: set[_Beat] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sleeping_until = -math.inf
        """When the thread, waiting, will look at the beats again; -inf while it is awake (it looks before waiting)."""

    def add(self, beat: _Beat) -> None:
        now = time.monotonic()
        beat.next_tick, beat.next_claim = now + beat.tick, now + beat.interval
        with self._changed:
            self._beats.add(beat)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
            if beat.next_tick < self._sleeping_until:  # waking the thread for nothing costs every operation
                self._changed.notify()

    def remove(self, beat: _Beat) -> None:
        # A beat already under way may still land: renewing an acknowledged entry claims nothing, and the lock
        # script never overwrites the DONE mark; a key released after a failure is re-set and expires by itself.
        beat.active = False
        with self._changed:
            self._beats.discard(beat)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [beat for beat in self._beats if beat.next_tick <= now]
                if not due:
                    self._sleeping_until = min((beat.next_tick for beat in self._beats), default=math.inf)
                    self._changed.wait(min(self._sleeping_until, now + 60) - now)
                    self._sleeping_until = -math.inf
                    continue
            for beat in due:
                self._beat(beat)

    def _beat(self, beat: _Beat) -> None:
        now = time.monotonic()
        beat.next_tick = now + beat.tick
        try:
            if beat.active and now >= beat.next_claim:
                self._client.xclaim(beat.stream, beat.group, beat.consumer, 0, [beat.entry_id], justid=True)
                beat.next_claim = now + beat.interval
            if beat.active and beat.lock is not None:
                self._renew(keys=[beat.lock[0]], args=[beat.consumer, beat.lock[1]])
        except Exception:  # noqa: BLE001 - a missed beat only risks a duplicate run, which is absorbed
            log.warning("heartbeat.failed", stream=beat.stream, entry_id=beat.entry_id)


@functools.cache
def _beater(redis_url: str) -> _Beater:
    return _Beater(redis_url)


def entry_id_of(message: Any) -> str:
    """The stream entry id of a FastStream Redis stream message."""
    ids = message.raw_message.get("message_ids") or [b""]
    return as_text(ids[0])
