"""The FastStream broker every service uses, and the stream topology it needs before the first publish."""

import asyncio
import copy
import logging
from collections.abc import Sequence
from typing import Any, Self

import structlog
from faststream import ExceptionMiddleware
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage
from faststream.redis.parser.message import MessageFormat
from faststream.redis.schemas.stream_sub import BatchT_co
from pydantic import ValidationError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError

from libs.common.events.streams import CONSUMER_GROUPS, DEAD_LETTERS, as_text
from libs.common.settings import ServiceSettings

log = structlog.get_logger()


class PlainJsonFormat(MessageFormat):
    """Entries carry the message JSON as-is in `__data__`: no FastStream envelope, so any Redis client can read them.

    Correlation ids live in the messages themselves, so FastStream headers are not needed.
    """

    __slots__ = ()

    @classmethod
    async def encode(cls, *, message: Any, **kwargs: Any) -> bytes:
        built = await cls.build(message=message, **kwargs)
        return built.data

    @classmethod
    def parse(cls, data: bytes) -> tuple[bytes, dict[str, Any]]:
        return data, {}


class StreamSubscription(StreamSub[BatchT_co]):
    """A stream subscription that FastStream copies cheaply. It copies the subscription to put the broker's prefix
    on its name at every read and again for every message's log context, with `deepcopy` (26 µs each, about a
    millisecond of CPU per object over all the services); only the name changes, so a shallow copy (4 µs) does."""

    __slots__ = ()

    def add_prefix(self, prefix: str) -> Self:
        prefixed = copy.copy(self)
        prefixed.name = f"{prefix}{self.name}"
        return prefixed


REDIS_MAX_CONNECTIONS = 100
REDIS_POOL_WAIT_SECONDS = 5.0


def redis_client(url: str) -> Redis:
    """A Redis client whose commands wait, up to REDIS_POOL_WAIT_SECONDS, for one of its REDIS_MAX_CONNECTIONS to
    be free. redis-py's default pool fails at once with "Too many connections" instead: after the event loop was
    held up for a moment, the gateway's submissions that had piled up met a full pool and were answered 503 (258
    of 5,000 at 500/s in the benchmark)."""
    return Redis.from_pool(
        BlockingConnectionPool.from_url(url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT_SECONDS)
    )


def make_broker(settings: ServiceSettings) -> RedisBroker:
    dead_letters = ExceptionMiddleware()

    @dead_letters.add_handler(ValidationError)
    async def dead_letter(exc: ValidationError, message: RedisStreamMessage) -> None:
        # A malformed entry can never succeed: park it with the reason and acknowledge it, so the consumer goes on.
        stream = as_text(message.raw_message.get("channel", b""))
        entry_ids = message.raw_message.get("message_ids") or [b""]
        await broker.publish(
            {
                "stream": stream,
                "entry_id": as_text(entry_ids[0]),
                "consumer": f"{settings.service_name}:{settings.instance_id}",
                "reason": str(exc)[:2000],
                "body": as_text(message.body[:65536]),
            },
            stream=DEAD_LETTERS,
            maxlen=settings.stream_maxlen,
        )
        log.warning("message.dead_lettered", stream=stream, entry_id=as_text(entry_ids[0]), errors=exc.error_count())

    broker = RedisBroker(
        str(settings.redis_url),
        message_format=PlainJsonFormat,
        middlewares=[dead_letters],
        logger=logging.getLogger("opa.faststream"),
        # On SIGTERM, messages being handled get this long to finish (and be acknowledged) before exit.
        graceful_timeout=settings.graceful_timeout_seconds,
    )
    return broker


async def ensure_topology(redis: Redis, streams: Sequence[str] | None = None) -> None:
    """Create streams and consumer groups at id 0, so that nothing published before a consumer starts is missed.

    FastStream creates groups at `$` (only new entries); creating them first, here, at 0 makes its attempt a no-op.
    Safe to call from every instance at every start and after Redis has lost its data.
    """
    for stream in streams or CONSUMER_GROUPS:
        groups = CONSUMER_GROUPS.get(stream, ())
        if not groups:
            if not await redis.exists(stream):
                # XADD + XDEL leaves an empty stream in place, so XREAD-ers can block on it.
                entry_id = await redis.xadd(stream, {"init": "1"})
                await redis.xdel(stream, entry_id)
            continue
        for group in groups:
            try:
                await redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


async def supervise_subscribers(broker: RedisBroker, redis: Redis, interval: float) -> None:
    """Restart subscribers that stopped, after re-creating the topology.

    FastStream stops a consumer-group subscriber for good when its group disappears (Redis restarted without
    its data, or was flushed) and, under an outer ASGI server, nothing restarts it: the service would stay up
    and silently consume nothing. This loop notices, re-creates the streams and groups, and starts it again.
    """
    while True:
        await asyncio.sleep(interval)
        stopped = [sub for sub in broker.subscribers if not sub.running]
        if not stopped:
            continue
        try:
            await ensure_topology(redis)
            for subscriber in stopped:
                await subscriber.start()
                log.warning("subscriber.restarted", subscriber=getattr(subscriber, "call_name", repr(subscriber)))
        except Exception:
            log.exception("subscriber.restart_failed")
