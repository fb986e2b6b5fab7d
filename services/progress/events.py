"""Reading `objects:events` a batch at a time, and decoding only the events some subscriber of this instance waits for.

Every instance reads every event (no consumer group: any instance may hold subscribers of any object). Through
FastStream's per-message path, each event cost a context, middlewares and a full validation of its document even
when nobody here followed its object, which is most of them. Now one handler call takes a whole read, and an event
is validated only when its object has subscribers. Skipping the others loses nothing: a subscriber subscribes
before it reads PostgreSQL, and an event reaches Redis only after its row is committed there.
"""

from collections.abc import Awaitable, Callable
from typing import Literal
from uuid import UUID

import orjson
import structlog
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage, RedisBatchStreamMessage

from libs.common.broker import StreamSubscription
from libs.common.events import ObjectProgressedV1
from libs.common.events.streams import DATA_FIELD, OBJECT_EVENTS
from services.progress.hub import Hub

log = structlog.get_logger()

EVENTS_PER_READ = 256

SUBSCRIPTION: "StreamSubscription[Literal[True]]" = StreamSubscription(
    OBJECT_EVENTS, polling_interval=1000, batch=True, max_records=EVENTS_PER_READ
)


class FollowedEvents(RedisBatchStreamMessage):
    """A read of `objects:events`; its body is the events of objects the hub has subscribers for, validated."""

    def __init__(self, raw: BatchStreamMessage, hub: Hub) -> None:
        self.read = len(raw["data"])
        """Entries read, followed or not."""
        self.events: list[ObjectProgressedV1] = []
        for fields in raw["data"]:
            body: bytes = fields.get(DATA_FIELD.encode(), b"")
            try:
                if hub.follows(UUID(orjson.loads(body)["object_id"])):
                    self.events.append(ObjectProgressedV1.model_validate_json(body))
            except (AttributeError, KeyError, TypeError, ValueError) as exc:  # JSON, validation: ValueErrors
                log.warning("event.malformed", stream=OBJECT_EVENTS, error=str(exc)[:200])
        super().__init__(raw, self.events, consumer=FAKE_CONSUMER, group=None)


Parser = Callable[[BatchStreamMessage], Awaitable[FollowedEvents]]
Decoder = Callable[[FollowedEvents], Awaitable[list[ObjectProgressedV1]]]


def reader(hub: Hub) -> tuple[Parser, Decoder]:
    """The parser and decoder of the subscription: the handler's body is the followed events of each read."""

    async def parse(raw: BatchStreamMessage) -> FollowedEvents:
        return FollowedEvents(raw, hub)

    async def decode(message: FollowedEvents) -> list[ObjectProgressedV1]:
        return message.events

    return parse, decode


def linger_after(read: int, linger: float) -> float:
    """How long to wait before the next read, after one that returned `read` entries: a full read means a backlog,
    which the next read must take on at once; a partial one means the stream is caught up, and waiting lets events
    gather for a larger next read. (A read that returns nothing does not reach the handler: it blocks instead.)"""
    return 0.0 if read >= EVENTS_PER_READ else linger
