"""Commands to the orchestrator, and the wait for its confirmation.

Each gateway instance listens on its own pub/sub channel; a command names that channel in `reply_to`, and the
orchestrator answers there after its transaction commits. A reply that never comes (orchestrator down, reply
lost) ends in a timeout, which the caller turns into 503 + Retry-After; the command itself stays in the stream
and is applied when an orchestrator reads it, so a client retrying the same request is safe.
"""

import asyncio
import contextlib
from uuid import UUID

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from libs.common.errors import UnavailableError
from libs.common.events import CommandReplyV1, ObjectCommand
from libs.common.events.streams import DATA_FIELD, OBJECT_COMMANDS

log = structlog.get_logger()


class CommandBus:
    def __init__(self, redis: Redis, stream_maxlen: int, reply_channel: str, timeout: float) -> None:
        self.redis = redis
        self.stream_maxlen = stream_maxlen
        self.reply_channel = reply_channel
        self.timeout = timeout
        self._waiting: dict[UUID, asyncio.Future[CommandReplyV1]] = {}
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.reply_channel)
        self._listener = asyncio.create_task(self._listen(), name="command-replies")

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def send(self, command: ObjectCommand) -> CommandReplyV1:
        """Publish the command and wait for the orchestrator's reply. Raises UnavailableError on timeout."""
        future: asyncio.Future[CommandReplyV1] = asyncio.get_running_loop().create_future()
        self._waiting[command.message_id] = future
        try:
            try:
                # A plain XADD of the command's JSON, as FastStream's publisher writes it (PlainJsonFormat): its
                # publish path deep-copied the stream's settings on every call, a third of a submission's CPU here.
                await self.redis.xadd(
                    OBJECT_COMMANDS,
                    {DATA_FIELD: command.model_dump_json()},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            except Exception as exc:  # noqa: BLE001 - any Redis failure means: not accepted, try again
                log.warning("command.publish_failed", error=str(exc))
                raise UnavailableError("the message broker is unreachable; try again shortly") from None
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.timeout)
            except TimeoutError:
                raise UnavailableError(
                    "the orchestrator did not confirm the request in time; retrying the same request is safe"
                ) from None
        finally:
            self._waiting.pop(command.message_id, None)

    async def _listen(self) -> None:
        if self._pubsub is None:
            return
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._resolve(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command.reply_listener_failed")
                await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(self.reply_channel)

    def _resolve(self, data: bytes) -> None:
        try:
            reply = CommandReplyV1.model_validate_json(data)
        except ValueError:
            log.warning("command.bad_reply")
            return
        future = self._waiting.get(reply.command_id)
        if future is not None and not future.done():
            future.set_result(reply)
