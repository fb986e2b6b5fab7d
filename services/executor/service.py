"""Runs one operation of one object: stream its data, compute, store the artifact, report the result."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from pydantic import JsonValue, ValidationError

from libs.common.domain import artifact_key
from libs.common.events import (
    OperationCancelledV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationStartedV1,
    RunOperationV1,
)
from services.executor.data import DataError, detect_format
from services.executor.operations import registry
from services.executor.operations.base import OperationContext, OperationFailedError
from services.executor.records import BATCH_BYTES, RecordStream, chunks_of
from services.executor.storage import ObjectMissingError, Storage, StorageUnavailableError

log = structlog.get_logger()

ARTIFACT_SCHEMA_VERSION = 1
Result = OperationCompletedV1 | OperationFailedV1


class OperationRunner:
    def __init__(
        self, storage: Storage, executor_id: str, max_document_bytes: int, timeout_seconds: float = 900.0
    ) -> None:
        self.storage = storage
        self.executor_id = executor_id
        self.max_document_bytes = max_document_bytes
        self.timeout_seconds = timeout_seconds

    def started(self, command: RunOperationV1) -> OperationStartedV1:
        return OperationStartedV1(**self._ids(command), executor_id=self.executor_id)

    def cancelled(self, command: RunOperationV1) -> OperationCancelledV1:
        """The report of an operation not started because its object's cancellation was requested."""
        return OperationCancelledV1(**self._ids(command), executor_id=self.executor_id)

    async def run(self, command: RunOperationV1, *, may_be_done: bool = True) -> Result:
        """Returns the result to publish. Raises only for what may succeed on another delivery: S3 unavailable
        through every retry (StorageUnavailableError) leaves the command pending, to be tried again later.

        `may_be_done`: the command may have run to completion before (a redelivery, a re-sent or duplicated
        command); its artifact is looked for first and, when it succeeded, reported instead of recomputed. A
        first delivery skips that S3 request."""
        key = artifact_key(command.identifier, command.operation, command.tenant)
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        records: RecordStream | None = None
        try:
            # Inside the try, so a missing or refused artifact fails the operation; S3 being down escapes (retried later).
            previous = await self.stored_result(command) if may_be_done else None
            if previous is not None:
                log.info("operation.already_done", operation=command.operation)
                return previous
            spec = registry().get(command.operation)
            if spec is None:
                raise OperationFailedError(f"no operation named {command.operation!r} is installed on this executor")
            try:
                options = spec.options_model.model_validate(command.options)
            except ValidationError as exc:
                raise OperationFailedError(f"invalid options: {exc.errors()[0]['msg']}") from None
            context = OperationContext(
                identifier=command.identifier, options=options, storage=self.storage, tenant=command.tenant
            )
            try:
                async with asyncio.timeout(self.timeout_seconds), self._open(command) as records:
                    outcome = await spec.run(records, context)
            except TimeoutError:
                raise OperationFailedError(f"timed out after {self.timeout_seconds:g} s") from None
            duration_ms = (time.perf_counter() - clock) * 1000
            artifact = self._artifact(
                command,
                records,
                started_at,
                duration_ms,
                "succeeded",
                outcome.result,
                outcome.output_url,
                output_format=outcome.output_format,
            )
            s3_url = await self.storage.put(key, artifact, "application/json", {"object-id": str(command.object_id)})
        except OperationFailedError as exc:
            return await self._failed(command, key, records, str(exc), exc.report, started_at, clock)
        except (DataError, ObjectMissingError, ValueError) as exc:
            return await self._failed(command, key, records, _describe(exc, command), None, started_at, clock)
        return OperationCompletedV1(
            **self._ids(command),
            executor_id=self.executor_id,
            s3_url=s3_url,
            output_url=outcome.output_url,
            output_format=outcome.output_format,  # type: ignore[arg-type]
            duration_ms=duration_ms,
            started_at=started_at,
        )

    @asynccontextmanager
    async def _open(self, command: RunOperationV1) -> AsyncIterator[RecordStream]:
        if command.data_url:
            async with self.storage.open(command.data_url, BATCH_BYTES) as (chunks, content_type):
                fmt = detect_format(command.data_format, command.data_url, content_type)
                yield RecordStream(chunks, fmt, self.max_document_bytes)
            return
        value: JsonValue = command.payload
        if value is None:
            value = {"identifier": command.identifier, "metadata": command.metadata}
        yield RecordStream(chunks_of(orjson.dumps(value)), "json", self.max_document_bytes)

    async def stored_result(self, command: RunOperationV1) -> OperationCompletedV1 | None:
        """The result of the command's operation when it completed before (its artifact says it succeeded), else
        None: a redelivered command whose artifact is already stored is reported again, not recomputed."""
        key = artifact_key(command.identifier, command.operation, command.tenant)
        raw = await self.storage.get_json_if_exists(key)
        if raw is None:
            return None
        try:
            artifact: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if artifact.get("object_id") != str(command.object_id) or artifact.get("status") != "succeeded":
            return None
        return OperationCompletedV1(
            **self._ids(command),
            executor_id=self.executor_id,
            s3_url=self.storage.url(key),
            output_url=artifact.get("output_url"),
            output_format=artifact.get("output_format"),
            duration_ms=float(artifact.get("duration_ms", 0.0)),
            started_at=artifact.get("started_at"),
        )

    async def _failed(
        self,
        command: RunOperationV1,
        key: str,
        records: RecordStream | None,
        error: str,
        report: dict[str, JsonValue] | None,
        started_at: datetime,
        clock: float,
    ) -> OperationFailedV1:
        if report is not None:
            duration_ms = (time.perf_counter() - clock) * 1000
            body = self._artifact(command, records, started_at, duration_ms, "failed", report, None, error)
            try:
                await self.storage.put(key, body, "application/json", {"object-id": str(command.object_id)})
            except (StorageUnavailableError, ValueError):
                log.warning("operation.report_not_stored", operation=command.operation)
        log.info("operation.failed", operation=command.operation, error=error)
        return OperationFailedV1(**self._ids(command), executor_id=self.executor_id, error=error)

    def _artifact(
        self,
        command: RunOperationV1,
        records: RecordStream | None,
        started_at: datetime,
        duration_ms: float,
        status: str,
        result: dict[str, JsonValue],
        output_url: str | None,
        error: str | None = None,
        output_format: str | None = None,
    ) -> bytes:
        stats = records.stats if records else None
        return orjson.dumps(
            {
                "schema_version": ARTIFACT_SCHEMA_VERSION,
                "object_id": str(command.object_id),
                "identifier": command.identifier,
                "task_id": str(command.task_id),
                "operation": command.operation,
                "index": command.index,
                "status": status,
                "error": error,
                "input": {
                    "url": command.data_url,
                    "kind": "s3" if command.data_url else ("payload" if command.payload is not None else "record"),
                    "format": records.format if records else None,
                    "size_bytes": stats.size_bytes if stats else None,
                    "sha256": stats.sha256 or None if stats else None,
                    "record_count": stats.record_count if stats else None,
                },
                "output_url": output_url,
                "output_format": output_format or _output_format(output_url),
                "executor_id": self.executor_id,
                "started_at": started_at.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "duration_ms": round(duration_ms, 3),
                "result": result,
            }
        )

    @staticmethod
    def _ids(command: RunOperationV1) -> dict[str, Any]:
        return {
            "object_id": command.object_id,
            "task_id": command.task_id,
            "operation": command.operation,
            "index": command.index,
        }


def _output_format(url: str | None) -> str | None:
    if url is None:
        return None
    return detect_format(None, url)


def _describe(exc: Exception, command: RunOperationV1) -> str:
    if isinstance(exc, ObjectMissingError):
        return f"input data not found at {command.data_url}"
    return str(exc)
