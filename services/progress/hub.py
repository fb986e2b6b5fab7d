"""In-process fan-out: one Redis read loop per instance feeds every SSE subscriber of that instance."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import orjson
from sse_starlette import ServerSentEvent

from libs.common.events import ObjectProgressedV1

Event = ServerSentEvent | bytes
"""What a stream yields: an event, or one already encoded (an Update's, the same bytes for every subscriber)."""


@dataclass(frozen=True, slots=True)
class Update:
    """One event as every subscriber of its object sends it: the document is encoded once, not once per subscriber
    (with thousands of subscribers of one object, encoding was most of the fan-out's time), and so is the SSE event
    that carries it."""

    seq: int
    data: str
    """The progress document, as JSON."""
    terminal: bool
    event: bytes
    """The SSE event (`id:` and `data:`), as sse-starlette would encode it."""

    @classmethod
    def of(cls, seq: int, data: str, terminal: bool) -> "Update":
        return cls(seq, data, terminal, ServerSentEvent(data=data, id=str(seq)).encode())


@dataclass(eq=False)
class Subscription:
    object_id: UUID
    queue: "asyncio.Queue[Update | None]"
    """Updates in order; None when the subscriber fell too far behind, and is to close (it resumes from PostgreSQL
    with Last-Event-ID and loses nothing)."""
    overflowed: bool = False


class Hub:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subscriptions: dict[UUID, set[Subscription]] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    def follows(self, object_id: UUID) -> bool:
        """Whether any subscriber of this instance waits for this object's events."""
        return object_id in self._subscriptions

    @contextmanager
    def subscribe(self, object_id: UUID) -> Iterator[Subscription]:
        # Unbounded: `publish` keeps the bound, leaving room for the overflow marker after the last update.
        subscription = Subscription(object_id, asyncio.Queue())
        self._subscriptions.setdefault(object_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subs = self._subscriptions.get(object_id)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[object_id]

    def publish(self, event: ObjectProgressedV1) -> None:
        subscriptions = self._subscriptions.get(event.object_id)
        if not subscriptions:
            return
        # Encoded as the stored documents are (services/progress/service.py), so a resumed stream reads the same.
        data = orjson.dumps(event.document.model_dump(mode="json")).decode()
        update = Update.of(event.seq, data, event.document.state.is_terminal)
        for subscription in subscriptions:
            if subscription.overflowed:
                continue
            if subscription.queue.qsize() >= self.queue_size:
                # A subscriber this far behind is dropped rather than allowed to grow memory.
                subscription.overflowed = True
                subscription.queue.put_nowait(None)
            else:
                subscription.queue.put_nowait(update)
