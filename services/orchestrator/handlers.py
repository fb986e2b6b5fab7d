"""Stream subscribers: parse, run one use case in one transaction, then relay its messages and answer the caller."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis
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
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService, UnitOfWork
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()
T = TypeVar("T")


class Orchestrator:
    """Runs use cases transactionally and does what must follow each commit."""

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

    async def run(self, use_case: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async with self.sessionmaker.begin() as session:
            uow = UnitOfWork(session)
            result = await use_case(uow)
            outbox_ids = await uow.flush_outbox()
        await self.relay.publish(outbox_ids)
        if uow.admission_needed:
            await self.admit()
        return result

    async def admit(self) -> int:
        async with self.sessionmaker.begin() as session:
            uow = UnitOfWork(session)
            admitted = await self.service.admit(uow)
            outbox_ids = await uow.flush_outbox()
        await self.relay.publish(outbox_ids)
        return admitted

    async def reply(self, reply_to: str | None, reply: CommandReplyV1) -> None:
        if reply_to:
            await self.redis.publish(reply_to, reply.model_dump_json())


def register(broker: RedisBroker, settings: OrchestratorSettings, orchestrator: Orchestrator) -> None:
    service = orchestrator.service

    @broker.subscriber(
        stream=StreamSub(OBJECT_COMMANDS, group=ORCHESTRATOR_GROUP, consumer=settings.instance_id, max_records=10),
        ack_policy=AckPolicy.NACK_ON_ERROR,  # an error leaves the entry pending, for recovery to claim
        title="object-commands",
    )
    async def on_object_command(command: AnyObjectCommand) -> None:
        structlog.contextvars.bind_contextvars(object_id=str(command.object_id), message_id=str(command.message_id))
        reply: CommandReplyV1
        match command:
            case SubmitObjectV1():
                reply = await orchestrator.run(lambda uow: service.submit(uow, command))
            case CancelObjectV1():
                reply = await orchestrator.run(lambda uow: service.cancel(uow, command))
            case RetryObjectV1():
                reply = await orchestrator.run(lambda uow: service.retry(uow, command))
        await orchestrator.reply(command.reply_to, reply)

    @broker.subscriber(
        stream=StreamSub(OPERATION_RESULTS, group=ORCHESTRATOR_GROUP, consumer=settings.instance_id, max_records=10),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="operation-results",
    )
    async def on_operation_result(event: AnyOperationResult) -> None:
        structlog.contextvars.bind_contextvars(object_id=str(event.object_id), message_id=str(event.message_id))
        match event:
            case OperationStartedV1():
                await orchestrator.run(lambda uow: service.operation_started(uow, event))
            case OperationCompletedV1():
                await orchestrator.run(lambda uow: service.operation_completed(uow, event))
            case OperationFailedV1():
                await orchestrator.run(lambda uow: service.operation_failed(uow, event))

    # The outbox relay writes these streams with plain XADDs; the declarations document them in AsyncAPI.
    broker.publisher(stream=OPERATION_COMMANDS, schema=RunOperationV1, title="operation-commands")
    broker.publisher(stream=OBJECT_EVENTS, schema=ObjectProgressedV1, title="object-events")
