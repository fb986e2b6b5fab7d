"""OperationRunner against an S3 endpoint: artifacts, outputs, sources, redelivery and failures."""

import csv
import hashlib
import io
from datetime import datetime
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest
from botocore.exceptions import ClientError
from pydantic import JsonValue
from types_aiobotocore_s3 import S3Client

from libs.common.domain import Operation
from libs.common.events import OperationCompletedV1, OperationFailedV1, RunOperationV1
from libs.common.s3 import parse_s3_url, s3_client
from libs.common.settings import S3Settings
from services.executor.service import ARTIFACT_SCHEMA_VERSION, OperationRunner
from services.executor.storage import Storage
from tests.integration.executor.conftest import EXECUTOR_ID, MAX_INPUT_BYTES

PEOPLE: list[JsonValue] = [
    {"Name": " Ann ", "age": 31, "city": "Oslo"},
    {"Name": "Bob", "age": 42, "city": "Oslo"},
    {"Name": "Cid", "age": 17, "city": "Rome"},
]


def identifier() -> str:
    return f"it-exec-{uuid4().hex}"


def command(operation: str, *, index: int = 0, total: int = 1, **fields: Any) -> RunOperationV1:
    values: dict[str, Any] = {"object_id": uuid4(), "task_id": uuid4(), "identifier": identifier()}
    return RunOperationV1(operation=Operation(operation), index=index, total=total, **(values | fields))


async def read(s3: S3Client, url: str) -> tuple[bytes, str]:
    bucket, key = parse_s3_url(url)
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        return await body.read(), response["ContentType"]


async def read_json(s3: S3Client, url: str) -> Any:
    raw, _ = await read(s3, url)
    return orjson.loads(raw)


async def exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


async def upload(s3: S3Client, bucket: str, key: str, body: bytes, content_type: str | None = None) -> str:
    if content_type:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    else:
        await s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def completed_of(result: OperationCompletedV1 | OperationFailedV1) -> OperationCompletedV1:
    assert isinstance(result, OperationCompletedV1), getattr(result, "error", result)
    return result


def failed_of(result: OperationCompletedV1 | OperationFailedV1) -> OperationFailedV1:
    assert isinstance(result, OperationFailedV1), result
    return result


@pytest.mark.parametrize("operation", [op.value for op in Operation])
async def test_run_stores_an_artifact_with_checksum_and_timing_for_an_inline_payload(
    runner: OperationRunner, s3: S3Client, bucket: str, operation: str
) -> None:
    cmd = command(operation, index=2, total=5, payload=PEOPLE)

    result = completed_of(await runner.run(cmd))

    key = f"{cmd.identifier}/{operation}_result.json"
    assert result.s3_url == f"s3://{bucket}/{key}"
    assert (result.object_id, result.task_id, result.operation, result.index) == (
        cmd.object_id,
        cmd.task_id,
        cmd.operation,
        2,
    )
    assert result.executor_id == EXECUTOR_ID
    raw, content_type = await read(s3, result.s3_url)
    assert content_type == "application/json"
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"object-id": str(cmd.object_id)}
    artifact = orjson.loads(raw)
    assert artifact["schema_version"] == ARTIFACT_SCHEMA_VERSION
    assert artifact["object_id"] == str(cmd.object_id)
    assert artifact["task_id"] == str(cmd.task_id)
    assert artifact["identifier"] == cmd.identifier
    assert (artifact["operation"], artifact["index"]) == (operation, 2)
    assert artifact["status"] == "succeeded"
    assert artifact["error"] is None
    assert artifact["executor_id"] == EXECUTOR_ID
    payload_bytes = orjson.dumps(PEOPLE)
    assert artifact["input"] == {
        "url": None,
        "kind": "payload",
        "format": "json",
        "size_bytes": len(payload_bytes),
        "sha256": hashlib.sha256(payload_bytes).hexdigest(),
    }
    started_at = datetime.fromisoformat(artifact["started_at"])
    finished_at = datetime.fromisoformat(artifact["finished_at"])
    assert started_at.tzinfo is not None
    assert started_at <= finished_at
    assert artifact["duration_ms"] >= 0
    assert artifact["duration_ms"] == pytest.approx(result.duration_ms, abs=0.001)
    assert isinstance(artifact["result"], dict)
    assert artifact["result"]


def test_started_names_the_command_and_the_executor(runner: OperationRunner) -> None:
    cmd = command("validate", index=1, total=2)
    event = runner.started(cmd)
    assert (event.object_id, event.task_id, event.operation, event.index) == (cmd.object_id, cmd.task_id, "validate", 1)
    assert event.executor_id == EXECUTOR_ID


async def test_run_works_on_the_object_record_when_there_is_no_data(runner: OperationRunner, s3: S3Client) -> None:
    cmd = command("enrich", metadata={"team": "qa"})
    result = completed_of(await runner.run(cmd))
    artifact = await read_json(s3, result.s3_url)
    assert artifact["input"]["kind"] == "record"
    assert artifact["result"]["content"]["shape"] == "document"
    assert set(artifact["result"]["fields"]) == {"identifier", "metadata"}


async def test_transform_stores_its_output_and_returns_its_url(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    cmd = command("transform", payload=PEOPLE, options={"steps": [{"op": "filter", "expression": "age > `18`"}]})

    result = completed_of(await runner.run(cmd))

    assert result.output_url == f"s3://{bucket}/{cmd.identifier}/transform_output.json"
    assert result.output_format == "json"
    output, content_type = await read(s3, result.output_url)
    assert content_type == "application/json"
    assert orjson.loads(output) == PEOPLE[:2]
    artifact = await read_json(s3, result.s3_url)
    assert artifact["output_url"] == result.output_url
    assert artifact["result"]["records_out"] == 2


async def test_run_reads_an_ndjson_source_whose_format_comes_from_its_key(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    raw = b"".join(orjson.dumps(record) + b"\n" for record in PEOPLE)
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/people.ndjson", raw)

    result = completed_of(await runner.run(command("analyze", data_url=url)))

    artifact = await read_json(s3, result.s3_url)
    assert artifact["input"] == {
        "url": url,
        "kind": "s3",
        "format": "ndjson",
        "size_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    assert artifact["result"]["record_count"] == 3
    assert artifact["result"]["fields"]["age"]["numeric"]["max"] == 42.0


async def test_run_reads_a_csv_source_in_the_format_the_command_names(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerows([["name", "age"], ["Ann", "31"], ["Bob", "42"]])
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/people", buffer.getvalue().encode())

    cmd = command(
        "transform",
        data_url=url,
        data_format="csv",
        options={"steps": [{"op": "cast", "types": {"age": "int"}}]},
    )
    result = completed_of(await runner.run(cmd))

    assert result.output_url is not None
    assert await read_json(s3, result.output_url) == [{"name": "Ann", "age": 31}, {"name": "Bob", "age": 42}]
    artifact = await read_json(s3, result.s3_url)
    assert artifact["input"]["format"] == "csv"


async def test_run_detects_the_format_from_the_content_type_when_the_key_has_no_suffix(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/blob", b"a,b\n1,2\n", content_type="text/csv")
    result = completed_of(await runner.run(command("enrich", data_url=url)))
    artifact = await read_json(s3, result.s3_url)
    assert artifact["result"]["content"]["format"] == "csv"
    assert artifact["result"]["content"]["record_count"] == 1


@pytest.mark.parametrize("operation", ["analyze", "transform"])
async def test_run_reports_a_stored_success_again_without_rewriting_it_when_redelivered(
    runner: OperationRunner, s3: S3Client, bucket: str, operation: str
) -> None:
    cmd = command(operation, payload=PEOPLE)
    first = completed_of(await runner.run(cmd))
    key = f"{cmd.identifier}/{operation}_result.json"
    before = await s3.head_object(Bucket=bucket, Key=key)

    again = completed_of(await runner.run(cmd))

    after = await s3.head_object(Bucket=bucket, Key=key)
    # The artifact holds its timestamps, so a rewrite would change the ETag.
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert again.s3_url == first.s3_url
    assert again.output_url == first.output_url
    assert again.output_format == first.output_format
    assert again.duration_ms == pytest.approx(first.duration_ms, abs=0.001)


async def test_run_recomputes_when_the_stored_artifact_records_a_failure(runner: OperationRunner, s3: S3Client) -> None:
    cmd = command("validate", payload=PEOPLE, options={"required": ["email"]})
    failed_of(await runner.run(cmd))

    fixed = cmd.model_copy(update={"options": {"required": ["age"]}})
    result = completed_of(await runner.run(fixed))

    artifact = await read_json(s3, result.s3_url)
    assert artifact["status"] == "succeeded"
    assert artifact["result"]["valid"] is True


async def test_run_fails_clearly_when_the_source_is_missing(runner: OperationRunner, s3: S3Client, bucket: str) -> None:
    url = f"s3://{bucket}/sources/{uuid4().hex}/absent.json"
    cmd = command("analyze", data_url=url)

    result = failed_of(await runner.run(cmd))

    assert result.error == f"input data not found at {url}"
    assert (result.object_id, result.task_id, result.operation) == (cmd.object_id, cmd.task_id, cmd.operation)
    assert result.executor_id == EXECUTOR_ID
    assert not await exists(s3, bucket, f"{cmd.identifier}/analyze_result.json")


async def test_run_fails_clearly_when_the_source_bucket_is_missing(runner: OperationRunner) -> None:
    url = f"s3://no-such-bucket-{uuid4().hex[:12]}/data.json"
    result = failed_of(await runner.run(command("analyze", data_url=url)))
    assert result.error == f"input data not found at {url}"


async def test_run_fails_without_retrying_when_the_source_bucket_name_is_invalid(runner: OperationRunner) -> None:
    result = failed_of(await runner.run(command("analyze", data_url="s3://bad!bucket/data.json")))
    assert "Invalid bucket name" in result.error
    assert "S3 unavailable" not in result.error


async def test_run_fails_when_the_source_is_not_an_s3_url(runner: OperationRunner) -> None:
    result = failed_of(await runner.run(command("analyze", data_url="https://example.com/data.json")))
    assert "not an s3:// URL" in result.error


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'[{"a": 1},', "data is not valid JSON"),
        (b'{"a": "\xff"}', "not UTF-8 text"),
    ],
)
async def test_run_fails_naming_the_problem_when_the_source_cannot_be_parsed(
    runner: OperationRunner, s3: S3Client, bucket: str, raw: bytes, message: str
) -> None:
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/bad.json", raw)
    result = failed_of(await runner.run(command("analyze", data_url=url)))
    assert message in result.error


async def test_run_fails_when_the_source_is_over_the_size_limit(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/big.json", b"[" + b"1," * MAX_INPUT_BYTES + b"1]")
    result = failed_of(await runner.run(command("analyze", data_url=url)))
    assert f"the limit is {MAX_INPUT_BYTES}" in result.error


async def test_run_fails_naming_the_option_when_options_are_invalid(runner: OperationRunner) -> None:
    result = failed_of(await runner.run(command("analyze", payload=PEOPLE, options={"top": 0})))
    assert result.error.startswith("invalid options:")
    assert "greater than or equal to 1" in result.error


async def test_validation_failure_stores_the_report_and_names_the_path(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    payload: list[JsonValue] = [{"id": 1}, {"name": "x"}]
    cmd = command("validate", payload=payload, options={"required": ["id"]})

    result = failed_of(await runner.run(cmd))

    assert "$[1].id" in result.error
    artifact = await read_json(s3, f"s3://{bucket}/{cmd.identifier}/validate_result.json")
    assert artifact["status"] == "failed"
    assert artifact["error"] == result.error
    assert artifact["schema_version"] == ARTIFACT_SCHEMA_VERSION
    assert artifact["result"]["valid"] is False
    assert artifact["result"]["errors"] == [{"path": "$[1].id", "message": "required field is missing or null"}]


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("json", "application/json"), ("ndjson", "application/x-ndjson"), ("csv", "text/csv")],
)
async def test_export_writes_the_data_in_the_format_asked_and_a_presigned_url(
    runner: OperationRunner, s3: S3Client, bucket: str, fmt: str, content_type: str
) -> None:
    records: list[JsonValue] = [{"id": 1, "name": "Ann"}, {"id": 2, "name": "Bob"}]
    cmd = command("export", payload=records, options={"format": fmt})

    result = completed_of(await runner.run(cmd))

    assert result.output_url is None
    export_url = f"s3://{bucket}/{cmd.identifier}/export.{fmt}"
    body, stored_type = await read(s3, export_url)
    assert stored_type == content_type
    artifact = await read_json(s3, result.s3_url)
    assert artifact["result"]["url"] == export_url
    assert artifact["result"]["format"] == fmt
    assert artifact["result"]["record_count"] == 2
    assert artifact["result"]["size_bytes"] == len(body)
    assert artifact["result"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert artifact["result"]["presigned_url_expires_in"] == 600
    async with httpx.AsyncClient() as http:
        response = await http.get(artifact["result"]["presigned_url"])
    assert response.status_code == 200
    assert response.content == body
    expected = {
        "json": orjson.dumps(records),
        "ndjson": b'{"id":1,"name":"Ann"}\n{"id":2,"name":"Bob"}\n',
        "csv": b"id,name\r\n1,Ann\r\n2,Bob\r\n",
    }[fmt]
    assert body == expected


async def test_run_fails_with_s3_unavailable_when_the_endpoint_is_unreachable(bucket: str) -> None:
    settings = S3Settings(s3_endpoint_url="http://127.0.0.1:1", s3_bucket=bucket)
    async with s3_client(settings) as client:
        storage = Storage(client, bucket, attempts=2, backoff_seconds=0.01, presign_expiry=600)
        runner = OperationRunner(storage, executor_id=EXECUTOR_ID, max_input_bytes=MAX_INPUT_BYTES)
        cmd = command("analyze", payload=PEOPLE)

        result = failed_of(await runner.run(cmd))

    assert result.error.startswith("S3 unavailable after 2 attempts")
    assert (result.object_id, result.task_id) == (cmd.object_id, cmd.task_id)
