"""Executor.execute against Redis and S3: what an operation (or a chain of them) reports on the results stream, and
in what order."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import uuid4

import orjson
from pydantic import RedisDsn
from redis.asyncio import Redis
from types_aiobotocore_s3 import S3Client

from libs.common.domain import Operation, artifact_key
from libs.common.events import ChainedOperation, RunOperationV1
from libs.common.events.streams import (
    DATA_FIELD,
    OPERATION_RESULTS,
    RUN_DONE,
    cancel_requested_key,
    running_operation_key,
)
from services.executor.handlers import DONE_TTL_MS, Executor
from services.executor.service import OperationRunner, Result
from services.executor.settings import ExecutorSettings
from tests.integration.executor._s3 import command, completed_of, exists, read_json


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


def chain(*operations: str, **fields: Any) -> RunOperationV1:
    first, *rest = operations
    then = [ChainedOperation(operation=Operation(op)) for op in rest]
    return command(first, total=len(operations), then=then, **fields)


async def test_a_chain_runs_each_operation_on_the_output_of_the_one_before_and_reports_each(
    clean: Redis, runner: OperationRunner, redis_url: str, s3: S3Client
) -> None:
    run = chain("transform", "analyze", payload=[{"A ": " x "}])

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(run, "0-1")

    transform, analyze = await reported(clean)
    assert (transform["type"], transform["operation"], transform["index"]) == ("operation.completed.v1", "transform", 0)
    assert (analyze["type"], analyze["operation"], analyze["index"]) == ("operation.completed.v1", "analyze", 1)
    assert transform["output_url"]
    artifact = await read_json(s3, analyze["s3_url"])
    assert artifact["input"]["url"] == transform["output_url"], "analyze read transform's output"


async def test_a_chain_stops_at_a_failure(clean: Redis, runner: OperationRunner, redis_url: str) -> None:
    run = chain("validate", "analyze", payload=[{"a": 1}], options={"required": ["missing"]})

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(run, "0-1")

    assert [(m["type"], m["operation"]) for m in await reported(clean)] == [("operation.failed.v1", "validate")]


async def test_a_chain_whose_object_is_being_cancelled_starts_no_further_operation(
    clean: Redis, runner: OperationRunner, redis_url: str, s3: S3Client, bucket: str
) -> None:
    run = chain("validate", "transform", "analyze", payload=[{"a": 1}])
    await clean.set(cancel_requested_key(run.object_id, run.task_id), b"1")

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(run, "0-1")

    # The running operation ends and reports; the next is not started, and the executor says so.
    assert [(m["type"], m["operation"], m["index"]) for m in await reported(clean)] == [
        ("operation.completed.v1", "validate", 0),
        ("operation.cancelled.v1", "transform", 1),
    ]
    assert not await exists(s3, bucket, artifact_key(run.identifier, "transform"))
    # transform's running key, taken with validate's report, is given back: a re-send of it must not wait for it.
    assert await clean.get(running_operation_key(run.object_id, "transform", run.task_id)) is None


async def test_each_operation_of_a_chain_holds_its_running_key_and_marks_it_done(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = chain("validate", "transform", "analyze", payload=[{"a": 1}])
    keys = [running_operation_key(run.object_id, op, run.task_id) for op in ("validate", "transform", "analyze")]
    taken: list[bytes | str | None] = []

    class Watching(OperationRunner):
        async def run(self, command: RunOperationV1, *, may_be_done: bool = True) -> Result:
            taken.append(await clean.get(running_operation_key(command.object_id, command.operation, command.task_id)))
            return await super().run(command, may_be_done=may_be_done)

    watching = Watching(runner.storage, runner.executor_id, runner.max_document_bytes)
    running = executor(clean, watching, redis_url, delay_ms=5_000)
    holds: list[str] = []
    hold = running._hold

    async def counted(redis: Redis, key: str) -> bool:
        holds.append(key)
        return await hold(redis, key)

    running._hold = counted  # type: ignore[method-assign]
    await running.execute(run, "0-1")

    assert taken == [b"executor-it"] * 3, "each ran holding its key"
    assert holds == keys[:1], "the later two were taken with the report of the one before, not one by one"
    assert [await clean.get(key) for key in keys] == [RUN_DONE] * 3


async def test_a_chain_whose_next_operation_is_held_elsewhere_waits_for_it(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = chain("validate", "analyze", payload=[{"a": 1}])
    analyze_key = running_operation_key(run.object_id, "analyze", run.task_id)
    await clean.set(analyze_key, b"executor-other", px=400)  # another executor runs it, for a little while more
    settings = ExecutorSettings.model_construct(
        redis_url=RedisDsn(redis_url), instance_id="executor-it", started_report_delay_ms=5_000, claim_idle_ms=600
    )

    await Executor(settings, runner=runner, redis=clean).execute(run, "0-1")

    assert [m["type"] for m in await reported(clean)] == ["operation.completed.v1", "operation.completed.v1"]
    assert await clean.get(analyze_key) == RUN_DONE, "taken over once the other's key expired, then run"


async def test_a_chain_whose_next_operation_ran_before_looks_for_its_artifact_first(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = chain("validate", "analyze", payload=[{"a": 1}])
    await clean.set(running_operation_key(run.object_id, "analyze", run.task_id), RUN_DONE, px=60_000)
    asked: list[bool] = []

    class Watching(OperationRunner):
        async def run(self, command: RunOperationV1, *, may_be_done: bool = True) -> Result:
            asked.append(may_be_done)
            return await super().run(command, may_be_done=may_be_done)

    watching = Watching(runner.storage, runner.executor_id, runner.max_document_bytes)
    await executor(clean, watching, redis_url, delay_ms=5_000).execute(run, "0-1")

    assert asked == [False, True], "its key said DONE, so analyze looked for a stored artifact before running"
    assert [m["type"] for m in await reported(clean)] == ["operation.completed.v1", "operation.completed.v1"]


async def test_a_cancellation_of_another_run_of_the_object_does_not_stop_the_chain(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = chain("validate", "analyze", payload=[{"a": 1}])
    await clean.set(cancel_requested_key(run.object_id, uuid4()), b"1")

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(run, "0-1")

    assert [m["type"] for m in await reported(clean)] == ["operation.completed.v1", "operation.completed.v1"]


async def test_a_chain_given_up_fails_its_object_at_the_operation_it_could_not_get_past(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = chain("validate", "transform", "analyze", payload=[{"a": 1}])
    give_up = executor(clean, runner, redis_url, delay_ms=5_000).give_up
    await give_up(run.model_dump_json().encode(), "delivered 5 times")
    validate = run
    transform = validate.following(completed_of(await runner.run(validate)))  # validate completed before
    assert transform is not None

    await give_up(run.model_dump_json().encode(), "delivered 5 times")

    assert [(m["type"], m["operation"], m["index"], m["error"]) for m in await reported(clean)] == [
        ("operation.failed.v1", "validate", 0, "gave up: delivered 5 times"),
        ("operation.failed.v1", "transform", 1, "gave up: delivered 5 times"),
    ]


async def test_a_command_older_than_the_done_mark_reports_a_stored_artifact_instead_of_running_again(
    clean: Redis, runner: OperationRunner, redis_url: str
) -> None:
    run = command("validate", payload={"a": 1})
    first = completed_of(await runner.run(run))
    # A late duplicate (its DONE mark expired): not a redelivery, not re-sent, but old.
    late = run.model_copy(update={"occurred_at": datetime.now(UTC) - timedelta(milliseconds=DONE_TTL_MS + 1000)})

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(late, "0-1")

    [again] = await reported(clean)
    assert again["type"] == "operation.completed.v1"
    assert datetime.fromisoformat(again["started_at"]) == first.started_at, "reported from the artifact, not re-run"


async def test_a_chain_taken_over_midway_reports_what_completed_and_goes_on_from_its_output(
    clean: Redis, runner: OperationRunner, redis_url: str, s3: S3Client
) -> None:
    run = chain("transform", "analyze", payload=[{"A ": " x "}])
    first = completed_of(await runner.run(run))  # the executor that died had completed transform

    await executor(clean, runner, redis_url, delay_ms=5_000).execute(run, "0-1", redelivered=True)

    transform, analyze = await reported(clean)
    assert datetime.fromisoformat(transform["started_at"]) == first.started_at, "reported from its artifact"
    assert transform["output_url"] == first.output_url
    assert analyze["type"] == "operation.completed.v1"
    assert (await read_json(s3, analyze["s3_url"]))["input"]["url"] == first.output_url
