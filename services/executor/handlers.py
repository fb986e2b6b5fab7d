from collections.abc import Callable

import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub

from libs.common.events import AnyOperationResult, RunOperationV1
from libs.common.events.streams import EXECUTOR_GROUP, OPERATION_COMMANDS, OPERATION_RESULTS
from services.executor.service import OperationRunner
from services.executor.settings import ExecutorSettings


def register(broker: RedisBroker, settings: ExecutorSettings, runner: Callable[[], OperationRunner]) -> None:
    results = broker.publisher(
        stream=StreamSub(OPERATION_RESULTS, maxlen=settings.stream_maxlen),
        schema=AnyOperationResult,
        title="operation-results",
    )

    @broker.subscriber(
        # max_records=1: an entry read ahead would sit in this consumer's pending list while another
        # operation runs, and count as in progress when it is not.
        stream=StreamSub(OPERATION_COMMANDS, group=EXECUTOR_GROUP, consumer=settings.instance_id, max_records=1),
        # Acknowledged only after the artifact is in S3 and the result is published; an error leaves it pending.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="operation-commands",
    )
    async def on_run_operation(command: RunOperationV1) -> None:
        structlog.contextvars.bind_contextvars(
            object_id=str(command.object_id), operation=command.operation, message_id=str(command.message_id)
        )
        await results.publish(runner().started(command))
        await results.publish(await runner().run(command))
