"""Stream subscribers: parse, run the use case in a transaction (shared with those that queued meanwhile), then relay
its messages and answer the caller."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from pydantic import TypeAdapter
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.events import (
    AnyObjectCommand,
    AnyOperationResult,
    CancelObjectV1,
    CommandReplyV1,
    ObjectProgressedV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationStartedV1,
    RetryObjectV1,
    RunOperationV1,
    SubmitObjectV1,
)
from libs.common.events.streams import (
    OBJECT_COMMANDS,
    OBJECT_EVENTS,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
    ORCHESTRATOR_GROUP,
)
from libs.common.reclaim import Reclaimer
from services.orchestrator.inflight import lost_operations
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.repository import ObjectRepository, OutboxRepository
from services.orchestrator.service import ObjectService, UnitOfWork
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()
T = TypeVar("T")

MAX_BATCH = 64
"""At most this many use cases share a transaction."""


@dataclass(eq=False)
class _Queued(Generic[T]):
    use_case: Callable[[UnitOfWork], Awaitable[T]]
    future: "asyncio.Future[T]"
    log_context: dict[str, Any]
    """The caller's structlog context (its message and object), for the lines the use case logs."""


def _settle(future: "asyncio.Future[Any]", *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # its caller has gone (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Orchestrator:
    """Runs use cases transactionally and does what must follow each commit.

    Group commit: the use cases of messages that arrive while a transaction is running share the next one. Under
    load that is one BEGIN/COMMIT, one flush, one admission check and one Redis round trip per batch instead of per
    message; alone, a message runs at once, as before. If a shared transaction fails, each of its use cases runs
    again in a transaction of its own, so a message that cannot be applied never fails the others.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
        relay: OutboxRelay,
        service: ObjectService,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.relay = relay
        self.service = service
        self._queue: list[_Queued[Any]] = []
        self._running: set[asyncio.Future[None]] = set()
        # One transaction at a time per instance: whoever holds it commits everything queued so far.
        self._turn = asyncio.Lock()

    async def run(self, use_case: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Apply `use_case` in a committed transaction, publish what it emitted, and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        queued = _Queued(use_case, future, structlog.contextvars.get_contextvars())
        self._queue.append(queued)
        try:
            async with self._turn:
                if queued in self._queue:  # not taken by an earlier batch: this caller runs the next one
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    # In a task of its own, shielded: if this caller is cancelled (shutdown), the others' work, which
                    # may have committed already, is still settled; it must never go back to the queue and run twice.
                    running = asyncio.ensure_future(self._run_batch(batch))
                    self._running.add(running)
                    running.add_done_callback(self._running.discard)
                    await asyncio.shield(running)
            # Settled by now, unless a batch whose caller left (see above) still runs with it.
            return await future
        except BaseException:
            if queued in self._queue:
                self._queue.remove(queued)
            future.cancel()
            raise

    async def _run_batch(self, batch: list[_Queued[Any]]) -> None:
        batch = [queued for queued in batch if not queued.future.done()]  # callers that left are not run
        if not batch:
            return
        try:
            results = await self._transaction(batch)
        except Exception as exc:  # noqa: BLE001 - handed to the callers: their message stays pending, for a retry
            if len(batch) == 1:
                _settle(batch[0].future, error=exc)
                return
            # Any use case may have caused it (or a deadlock with another instance): each runs again alone.
            log.info("batch.retried_one_by_one", size=len(batch), error=type(exc).__name__)
            for queued in batch:
                await self._run_batch([queued])
            return
        for queued, result in zip(batch, results, strict=True):
            _settle(queued.future, result=result)

    async def _transaction(self, batch: list[_Queued[Any]]) -> list[Any]:
        published = self.relay.take_published()
        try:
            async with self.sessionmaker.begin() as session:
                uow = UnitOfWork(session)
                if published:  # earlier messages already on their streams: their rows go with this transaction
                    await OutboxRepository(session).delete(published)
                results = []
                for queued in batch:
                    with structlog.contextvars.bound_contextvars(**queued.log_context):
                        results.append(await queued.use_case(uow))
                if uow.admission_needed:
                    # In the same transaction: a slot freed (or an object queued) is filled without a second round
                    # trip. Admission itself cannot deadlock: it skips rows other transactions hold, and takes its
                    # lock last. (The use cases before it can, with another instance's batch: see _run_batch.)
                    await self.service.admit(uow)
                outbox = await uow.flush()
        except BaseException:
            self.relay.requeue(published)
            raise
        try:
            await self.relay.publish_committed(outbox)
        except Exception:  # committed: the outbox sweep publishes the rows later; nothing may run twice
            log.warning("outbox.publish_deferred", rows=len(outbox), exc_info=True)
        return results

    async def admit(self) -> int:
        async with self.sessionmaker.begin() as session:
            uow = UnitOfWork(session)
            admitted = await self.service.admit(uow)
            outbox = await uow.flush()
        await self.relay.publish_committed(outbox)
        return admitted

    async def handle_command(self, command: SubmitObjectV1 | CancelObjectV1 | RetryObjectV1) -> None:
        structlog.contextvars.bind_contextvars(object_id=str(command.object_id), message_id=str(command.message_id))
        service = self.service
        reply: CommandReplyV1
        match command:
            case SubmitObjectV1():
                reply = await self.run(lambda uow: service.submit(uow, command))
            case CancelObjectV1():
                reply = await self.run(lambda uow: service.cancel(uow, command))
            case RetryObjectV1():
                reply = await self.run(lambda uow: service.retry(uow, command))
        await self.reply(command.reply_to, reply)

    async def handle_result(self, event: OperationStartedV1 | OperationCompletedV1 | OperationFailedV1) -> None:
        structlog.contextvars.bind_contextvars(object_id=str(event.object_id), message_id=str(event.message_id))
        service = self.service
        match event:
            case OperationStartedV1():
                await self.run(lambda uow: service.operation_started(uow, event))
            case OperationCompletedV1():
                await self.run(lambda uow: service.operation_completed(uow, event))
            case OperationFailedV1():
                await self.run(lambda uow: service.operation_failed(uow, event))

    async def redispatch_lost(self, older_than_seconds: float) -> int:
        """Re-send every running operation sent more than `older_than_seconds` ago that Redis has lost track of."""
        before = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        async with self.sessionmaker() as session:
            in_flight = await ObjectRepository(session).in_flight_dispatched_before(before)
        lost = await lost_operations(self.redis, in_flight)
        if not lost:
            return 0
        async with self.sessionmaker.begin() as session:
            uow = UnitOfWork(session)
            count = await self.service.redispatch(uow, lost, before)
            outbox = await uow.flush()
        await self.relay.publish_committed(outbox)
        return count

    async def database_ready(self) -> bool:
        try:
            async with self.sessionmaker() as session:
                await session.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means: not now
            return False
        return True

    async def reply(self, reply_to: str | None, reply: CommandReplyV1) -> None:
        if reply_to:
            await self.redis.publish(reply_to, reply.model_dump_json())


def register(broker: RedisBroker, settings: OrchestratorSettings, orchestrator: Orchestrator) -> None:
    @broker.subscriber(
        stream=StreamSub(OBJECT_COMMANDS, group=ORCHESTRATOR_GROUP, consumer=settings.instance_id, max_records=10),
        ack_policy=AckPolicy.NACK_ON_ERROR,  # an error leaves the entry pending: the Reclaimer retries it
        # Several at once: a handler spends most of its time waiting for PostgreSQL, or queued for a shared commit.
        max_workers=settings.handler_concurrency,
        title="object-commands",
    )
    async def on_object_command(command: AnyObjectCommand) -> None:
        await orchestrator.handle_command(command)

    @broker.subscriber(
        stream=StreamSub(OPERATION_RESULTS, group=ORCHESTRATOR_GROUP, consumer=settings.instance_id, max_records=10),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_workers=settings.handler_concurrency,
        title="operation-results",
    )
    async def on_operation_result(event: AnyOperationResult) -> None:
        await orchestrator.handle_result(event)

    # The outbox relay writes these streams with plain XADDs; the declarations document them in AsyncAPI.
    broker.publisher(stream=OPERATION_COMMANDS, schema=RunOperationV1, title="operation-commands")
    broker.publisher(stream=OBJECT_EVENTS, schema=ObjectProgressedV1, title="object-events")


def reclaimers(redis: Redis, settings: OrchestratorSettings, orchestrator: Orchestrator) -> list[Reclaimer]:
    """Retry what an orchestrator instance left pending (it died, or a handler failed), from any instance."""
    commands: TypeAdapter[AnyObjectCommand] = TypeAdapter(AnyObjectCommand)
    results: TypeAdapter[AnyOperationResult] = TypeAdapter(AnyOperationResult)

    async def command(body: bytes, _entry_id: str) -> None:
        await orchestrator.handle_command(commands.validate_json(body))

    async def result(body: bytes, _entry_id: str) -> None:
        await orchestrator.handle_result(results.validate_json(body))

    common = {
        "redis": redis,
        "group": ORCHESTRATOR_GROUP,
        "consumer": settings.instance_id,
        "idle_ms": settings.claim_idle_ms,
        "max_deliveries": settings.max_deliveries,
        "maxlen": settings.stream_maxlen,
        "ready": orchestrator.database_ready,
    }
    return [
        Reclaimer(stream=OBJECT_COMMANDS, handler=command, **common),  # type: ignore[arg-type]
        Reclaimer(stream=OPERATION_RESULTS, handler=result, **common),  # type: ignore[arg-type]
    ]
