"""What every peer's worker shares: the same work our executor does, on boto3 and one asyncpg connection.

A peer task runs our OperationRunner (the very code an executor runs: the idempotency check against the stored
artifact, our operation implementations, the artifact and transform output written to S3), with botocore's
synchronous client underneath instead of aiobotocore, then records the operation's progress in its `peer_object`
row. Each worker process (or thread) owns one event loop, one boto3 client and one PostgreSQL connection for its
whole life, as a fair user would: nothing is set up per task.

Workers are configured by environment: BENCH_PEER_DATABASE_URL (a postgresql:// DSN), BENCH_PEER_REDIS_URL,
BENCH_BUCKET, S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_REGION.
"""

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import boto3  # type: ignore[import-untyped]
from botocore.config import Config
from pydantic import JsonValue

from libs.common.events import RunOperationV1
from libs.common.s3 import expect_continue_for_large_bodies_only
from services.executor.service import OperationRunner
from services.executor.storage import Storage

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS peer_object (
    id uuid PRIMARY KEY,
    system text NOT NULL,
    identifier text NOT NULL UNIQUE,
    state text NOT NULL,
    current_operation text,
    operations_status jsonb NOT NULL DEFAULT '{}'::jsonb,
    error_message text,
    submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""

INSERT = "INSERT INTO peer_object (id, system, identifier, state) VALUES ($1, $2, $3, 'queued')"

_STARTED = """
UPDATE peer_object SET state = 'processing', current_operation = $2,
    started_at = coalesce(started_at, clock_timestamp()), updated_at = clock_timestamp()
WHERE id = $1
"""
_PROGRESSED = """
UPDATE peer_object SET current_operation = $2,
    operations_status = operations_status || jsonb_build_object($2::text, jsonb_build_object('completed', true, 's3_url', $3::text)),
    state = CASE WHEN $4 THEN 'completed' ELSE state END,
    finished_at = CASE WHEN $4 THEN clock_timestamp() END,
    updated_at = clock_timestamp()
WHERE id = $1
"""
_FAILED = "UPDATE peer_object SET state = 'failed', error_message = $2, finished_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1"


class _Body:
    """botocore's StreamingBody behind the async interface Storage reads through."""

    def __init__(self, body: Any) -> None:
        self._body = body

    async def __aenter__(self) -> "_Body":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._body.close()

    async def read(self) -> bytes:
        return cast(bytes, self._body.read())

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        for chunk in self._body.iter_chunks(size):
            yield chunk

    def close(self) -> None:
        self._body.close()


class SyncS3:
    """A boto3 S3 client with awaitable methods: every call runs synchronously in the worker, as in any boto3 task."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            response = method(**kwargs)
            if isinstance(response, dict) and "Body" in response:
                response["Body"] = _Body(response["Body"])
            return response

        return call


def s3_client() -> Any:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        # The same client settings as our executors' (libs/common/s3.py).
        config=Config(
            max_pool_connections=10,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    expect_continue_for_large_bodies_only(client.meta.events)
    return client


@dataclass
class Worker:
    loop: asyncio.AbstractEventLoop
    db: Any
    runner: OperationRunner

    @classmethod
    def create(cls, name: str) -> "Worker":
        loop = asyncio.new_event_loop()
        db = loop.run_until_complete(asyncpg.connect(os.environ["BENCH_PEER_DATABASE_URL"]))
        storage = Storage(
            SyncS3(s3_client()),  # type: ignore[arg-type]
            os.environ["BENCH_BUCKET"],
            attempts=3,
            backoff_seconds=0.2,
            presign_expiry=3600,
        )
        return cls(loop, db, OperationRunner(storage, name, max_document_bytes=64 * 1024 * 1024))

    def run_operation(
        self,
        object_id: str,
        identifier: str,
        operations: list[str],
        index: int,
        payload: JsonValue,
        data: tuple[str | None, str | None] = (None, None),
    ) -> tuple[str | None, str | None]:
        """Runs operations[index]; returns the data URL and format the next operation reads."""
        return self.loop.run_until_complete(self._run(object_id, identifier, operations, index, payload, data))

    def run_object(self, object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
        data: tuple[str | None, str | None] = (None, None)
        for index in range(len(operations)):
            data = self.run_operation(object_id, identifier, operations, index, payload, data)

    async def _run(
        self,
        object_id: str,
        identifier: str,
        operations: list[str],
        index: int,
        payload: JsonValue,
        data: tuple[str | None, str | None],
    ) -> tuple[str | None, str | None]:
        oid = uuid.UUID(object_id)
        operation = operations[index]
        await self.db.execute(_STARTED, oid, operation)
        command = RunOperationV1(
            object_id=oid,
            task_id=oid,
            operation=operation,
            index=index,
            total=len(operations),
            identifier=identifier,
            data_url=data[0],
            data_format=data[1],  # type: ignore[arg-type]
            payload=payload,
        )
        # As our executors do on a first delivery (and as a Celery or dramatiq user would): no look for an
        # earlier artifact first.
        result = await self.runner.run(command, may_be_done=False)
        if result.type != "operation.completed.v1":
            await self.db.execute(_FAILED, oid, result.error)
            raise RuntimeError(f"{identifier} {operation} failed: {result.error}")
        await self.db.execute(_PROGRESSED, oid, operation, result.s3_url, index == len(operations) - 1)
        if result.output_url:
            return result.output_url, result.output_format
        return data


_local = threading.local()


def worker() -> Worker:
    """This thread's Worker, made on its first task (each process and each thread gets its own)."""
    current: Worker | None = getattr(_local, "worker", None)
    if current is None:
        current = Worker.create(f"{os.getpid()}-{threading.get_ident()}")
        _local.worker = current
    return current
