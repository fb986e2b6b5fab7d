"""In-process fan-out: one Redis read loop per instance feeds every SSE subscriber of that instance."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

from libs.common.events import ObjectProgressedV1


@dataclass(eq=False)
class Subscription:
    object_id: UUID
    queue: asyncio.Queue[ObjectProgressedV1]
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subscriptions: dict[UUID, set[Subscription]] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    @contextmanager
    def subscribe(self, object_id: UUID) -> Iterator[Subscription]:
        subscription = Subscription(object_id, asyncio.Queue(self.queue_size))
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
        for subscription in self._subscriptions.get(event.object_id, ()):
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                # A subscriber this far behind is dropped rather than allowed to grow memory; it resumes from
                # PostgreSQL with Last-Event-ID and loses nothing.
                subscription.overflowed.set()
