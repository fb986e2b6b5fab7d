"""Reading a stream in batches through FastStream, with each entry validated, and acknowledged by the handler after
its own commit.

One handler call per read of up to MAX_BATCH entries, whose use cases then share a transaction. A message at a
time, FastStream's own path (context, middlewares, decoding, acknowledgement) cost about as much CPU as the use case
itself. A malformed entry is dead-lettered, and a failed one stays pending for the Reclaimer, without holding back
the rest of its batch.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import structlog
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage, RedisBatchStreamMessage
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.broker import StreamSubscription
from libs.common.events.streams import DATA_FIELD, ORCHESTRATOR_GROUP, as_text
from libs.common.reclaim import dead_letter
from services.orchestrator.service import ResultAheadError
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()
M = TypeVar("M")

MAX_BATCH = 64
"""Entries per read; at most this many use cases share a transaction."""


class ValidatedBatch(RedisBatchStreamMessage, Generic[M]):
    """A batch read from a stream. Its body is the entries that are valid messages; the rest are kept aside."""

    def __init__(self, raw: BatchStreamMessage, adapter: TypeAdapter[M]) -> None:
        self.entry_ids: list[str] = []
        """Of the valid entries, in the body's order."""
        self.malformed: list[tuple[str, bytes, str]] = []
        """Entry id, body and what is wrong, for each entry that can never be applied."""
        self.messages: list[M] = []
        """The valid entries, validated: the handler's body."""
        for raw_id, fields in zip(raw["message_ids"], raw["data"], strict=True):
            entry_id, body = as_text(raw_id), fields.get(DATA_FIELD.encode())
            if body is None:
                self.malformed.append((entry_id, b"", f"entry has no {DATA_FIELD} field"))
                continue
            try:
                self.messages.append(adapter.validate_json(body))
            except ValidationError as exc:
                self.malformed.append((entry_id, body, str(exc)))
                continue
            self.entry_ids.append(entry_id)
        super().__init__(raw, self.messages, consumer=FAKE_CONSUMER, group=None)


@dataclass
class StreamBatch(Generic[M]):
    """How the orchestrator's group reads `stream`: the subscription, and the parser and decoder FastStream calls.

    FastStream's own batch parser decodes every entry and encodes the batch again as one JSON document, failing
    outright on an entry that is not JSON; here each entry is validated on its own, once, and the handler's body
    is the valid messages.
    """

    redis: Redis
    stream: str
    settings: OrchestratorSettings
    adapter: TypeAdapter[M]

    @property
    def subscription(self) -> "StreamSubscription[Literal[True]]":
        return StreamSubscription(
            self.stream, group=ORCHESTRATOR_GROUP, consumer=self.settings.instance_id, batch=True, max_records=MAX_BATCH
        )

    async def parse(self, raw: BatchStreamMessage) -> ValidatedBatch[M]:
        return ValidatedBatch(raw, self.adapter)

    @staticmethod
    async def decode(message: ValidatedBatch[M]) -> list[M]:
        return message.messages

    async def consume(
        self,
        message: Any,
        messages: list[M],
        handle: Callable[[list[M], list[str]], Awaitable[list[BaseException | None]]],
    ) -> None:
        """Dead-letter the batch's malformed entries, and hand its `messages` (the handler's body: the valid entries)
        over together, with their entry ids: `handle` acknowledges each it applies, in the round trip that follows
        its commit, and returns None for it, or the exception each other one failed with (left pending)."""
        if not isinstance(message, ValidatedBatch):
            raise TypeError(f"{self.stream}: expected a batch parsed by StreamBatch.parse, got {type(message)}")
        consumer = f"{self.settings.service_name}:{self.settings.instance_id}"
        for entry_id, body, reason in message.malformed:
            # Acknowledged as soon as it is parked, so nothing that happens to the rest of the batch parks it twice.
            try:
                await dead_letter(
                    self.redis, self.stream, entry_id, consumer, body, reason, self.settings.stream_maxlen
                )
                await self.redis.xack(self.stream, ORCHESTRATOR_GROUP, entry_id)
            except RedisError:  # left pending: the Reclaimer parks it once its deliveries run out
                log.warning("message.dead_letter_failed", stream=self.stream, entry_id=entry_id, exc_info=True)
        errors = await handle(messages, message.entry_ids) if messages else []
        for entry_id, error in zip(message.entry_ids, errors, strict=True):
            if error is None:
                continue
            if isinstance(error, ResultAheadError):  # not a failure: it waits, pending, for its object's earlier one
                log.info("message.waits", stream=self.stream, entry_id=entry_id, reason=str(error))
            else:  # left pending: the Reclaimer runs it again once it has been idle for CLAIM_IDLE_MS
                log.error("message.failed", stream=self.stream, entry_id=entry_id, exc_info=error)
