"""Executor.execute against Redis and S3: what an operation reports on the results stream, and in what order."""

import asyncio
from typing import Any, cast

import orjson
from pydantic import RedisDsn
from redis.asyncio import Redis

from libs.common.events import RunOperationV1
from libs.common.events.streams import DATA_FIELD, OPERATION_RESULTS
from services.executor.handlers import Executor
from services.executor.service import OperationRunner, Result
from services.executor.settings import ExecutorSettings
from tests.integration.executor._s3 import command


class SlowRunner(OperationRunner):
    """The real runner, after a pause: an operation that takes a while."""

    async def run(self, command: RunOperationV1, *, may_be_done: bool = True) -> Result:
        await asyncio.sleep(0.3)
        return await super().run(command, may_be_done=may_be_done)


def executor(redis: Redis, runner: OperationRunner, redis_url: str, delay_ms: int) -> Executor:
    settings = ExecutorSettings.model_construct(
        redis_url=RedisDsn(redis_url), instance_id="executor-it", started_report_delay_ms=delay_ms
    )
    return Executor(settings, runner=runner, redis=redis)


async def reported(redis: Redis) -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(OPERATION_RESULTS))
    return [orjson.loads(fields[DATA_FIELD.encode()]) for _, fields in entries]


async def test_an_operation_shorter_than_the_delay_reports_only_its_result(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    await executor(clean, runner, redis_url, delay_ms=5_000).execute(command("validate", payload={"a": 1}), "0-1")

    assert [message["type"] for message in await reported(clean)] == ["operation.completed.v1"]


async def test_an_operation_longer_than_the_delay_reports_its_start_first(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    slow = SlowRunner(runner.storage, runner.executor_id, runner.max_document_bytes)
    await executor(clean, slow, redis_url, delay_ms=50).execute(command("validate", payload={"a": 1}), "0-1")

    started, completed = await reported(clean)
    assert (started["type"], completed["type"]) == ("operation.started.v1", "operation.completed.v1")
    assert started["occurred_at"] < completed["occurred_at"]


async def test_a_delay_of_zero_reports_every_start(clean: Redis, runner: OperationRunner, redis_url: str) -> None:
    await executor(clean, runner, redis_url, delay_ms=0).execute(command("validate", payload={"a": 1}), "0-1")

    assert [message["type"] for message in await reported(clean)] == ["operation.started.v1", "operation.completed.v1"]
