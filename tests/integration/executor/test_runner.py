"""OperationRunner against an S3 endpoint: artifacts, outputs, sources, redelivery and failures."""

import csv
import hashlib
import io
from datetime import datetime
from uuid import uuid4

import httpx
import orjson
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import JsonValue
from types_aiobotocore_s3 import S3Client

from libs.common.domain import Operation
from libs.common.settings import S3Settings
from services.executor.records import BATCH_BYTES
from services.executor.service import ARTIFACT_SCHEMA_VERSION, OperationRunner
from services.executor.storage import Storage, StorageUnavailableError
from tests.integration.executor._s3 import (
    command,
    completed_of,
    exists,
    failed_of,
    following,
    read,
    read_json,
    upload,
)
from tests.integration.executor.conftest import EXECUTOR_ID, MAX_DOCUMENT_BYTES, PRESIGN_EXPIRY

PEOPLE: list[JsonValue] = [
    {"Name": " Ann ", "age": 31, "city": "Oslo"},
    {"Name": "Bob", "age": 42, "city": "Oslo"},
    {"Name": "Cid", "age": 17, "city": "Rome"},
]


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
        "record_count": len(PEOPLE),
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

    assert result.output_url == f"s3://{bucket}/{cmd.identifier}/transform_output.ndjson"
    assert result.output_format == "ndjson"
    output, content_type = await read(s3, result.output_url)
    assert content_type == "application/x-ndjson"
    assert [orjson.loads(line) for line in output.splitlines()] == PEOPLE[:2]
    artifact = await read_json(s3, result.s3_url)
    assert artifact["output_url"] == result.output_url
    assert artifact["output_format"] == "ndjson"
    assert artifact["result"]["records_out"] == 2
    assert artifact["result"]["output"] == {
        "url": result.output_url,
        "format": "ndjson",
        "size_bytes": len(output),
        "sha256": hashlib.sha256(output).hexdigest(),
    }


async def test_transform_keeps_a_single_document_a_json_document(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    cmd = command("transform", payload={"First Name": " Ann "})
    result = completed_of(await runner.run(cmd))
    assert result.output_url == f"s3://{bucket}/{cmd.identifier}/transform_output.json"
    assert result.output_format == "json"
    output, content_type = await read(s3, result.output_url)
    assert content_type == "application/json"
    assert orjson.loads(output) == {"first_name": "Ann"}


async def test_transform_output_stays_readable_when_its_filter_drops_a_document(
    runner: OperationRunner, s3: S3Client
) -> None:
    cmd = command(
        "transform", total=2, payload={"age": 3}, options={"steps": [{"op": "filter", "expression": "age > `5`"}]}
    )
    transformed = completed_of(await runner.run(cmd))
    assert transformed.output_url is not None
    assert (await read(s3, transformed.output_url))[0] == b"[]"

    analyze = completed_of(await runner.run(following(cmd, transformed, "analyze")))

    assert (await read_json(s3, analyze.s3_url))["result"]["record_count"] == 0


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
        "record_count": 3,
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
    assert result.output_format == "ndjson"
    output, _ = await read(s3, result.output_url)
    assert [orjson.loads(line) for line in output.splitlines()] == [
        {"name": "Ann", "age": 31},
        {"name": "Bob", "age": 42},
    ]
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
    ("name", "raw", "message"),
    [
        ("bad.json", b'[{"a": 1},', "data is not valid JSON"),
        ("bad.json", b'{"a": "\xff"}', "not valid UTF-8"),
        ("bad.json", b'[{"a": "\xff"}]', "invalid bytes in UTF8"),
        ("bad.ndjson", b'{"a": 1}\n{"a": \n', "NDJSON line 2 is not valid JSON"),
        ("bad.csv", b"a,b\n1,\xff\n", "CSV is not UTF-8 text"),
        ("bad.csv", b"a,b\n1,2,3\n", "a CSV row has 3 cells but the header has 2"),
    ],
)
async def test_run_fails_naming_the_problem_when_the_source_cannot_be_parsed(
    runner: OperationRunner, s3: S3Client, bucket: str, name: str, raw: bytes, message: str
) -> None:
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/{name}", raw)
    cmd = command("analyze", data_url=url)
    result = failed_of(await runner.run(cmd))
    assert message in result.error
    assert not await exists(s3, bucket, f"{cmd.identifier}/analyze_result.json")


async def test_run_fails_when_a_document_source_is_over_the_size_limit(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    body = orjson.dumps({"values": [1] * MAX_DOCUMENT_BYTES})
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/big.json", body)
    result = failed_of(await runner.run(command("analyze", data_url=url)))
    assert f"over {MAX_DOCUMENT_BYTES} bytes" in result.error


async def test_run_streams_an_array_source_over_the_document_size_limit(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    body = b"[" + b"1," * MAX_DOCUMENT_BYTES + b"1]"
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/big.json", body)
    result = completed_of(await runner.run(command("analyze", data_url=url)))
    artifact = await read_json(s3, result.s3_url)
    assert artifact["result"]["record_count"] == MAX_DOCUMENT_BYTES + 1
    assert artifact["input"]["size_bytes"] == len(body)


async def test_run_fails_naming_an_operation_that_is_not_installed(runner: OperationRunner) -> None:
    result = failed_of(await runner.run(command("frobnicate", payload=PEOPLE)))
    assert result.error == "no operation named 'frobnicate' is installed on this executor"


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

    assert (result.output_url, result.output_format) == (None, None)
    export_url = f"s3://{bucket}/{cmd.identifier}/export.{fmt}"
    body, stored_type = await read(s3, export_url)
    assert stored_type == content_type
    artifact = await read_json(s3, result.s3_url)
    assert artifact["result"]["url"] == export_url
    assert artifact["result"]["format"] == fmt
    assert artifact["result"]["record_count"] == 2
    assert artifact["result"]["size_bytes"] == len(body)
    assert artifact["result"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert artifact["result"]["presigned_url_expires_in"] == PRESIGN_EXPIRY
    assert artifact["result"]["dropped_fields"] == []
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


async def test_run_raises_s3_unavailable_when_the_endpoint_is_unreachable(bucket: str) -> None:
    # Not a failed result: the command stays pending, to be run again once S3 is back.
    settings = S3Settings(s3_endpoint_url="http://127.0.0.1:1", s3_bucket=bucket)
    # botocore's own retries (with their backoff of seconds) add nothing here: Storage's attempts are the subject.
    config = AioConfig(retries={"max_attempts": 1}, connect_timeout=1)
    async with get_session().create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=config,
    ) as client:
        storage = Storage(client, bucket, attempts=2, backoff_seconds=0.01, presign_expiry=PRESIGN_EXPIRY)
        runner = OperationRunner(storage, executor_id=EXECUTOR_ID, max_document_bytes=MAX_DOCUMENT_BYTES)

        with pytest.raises(StorageUnavailableError, match=r"^S3 unavailable after 2 attempts"):
            await runner.run(command("analyze", payload=PEOPLE))


async def test_run_fails_when_the_operation_outlasts_the_timeout(storage: Storage, s3: S3Client, bucket: str) -> None:
    body = b"".join(orjson.dumps({"id": i, "text": f"record {i}"}) + b"\n" for i in range(200_000))
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/slow.ndjson", body)
    runner = OperationRunner(storage, EXECUTOR_ID, MAX_DOCUMENT_BYTES, timeout_seconds=0.05)
    cmd = command("analyze", data_url=url)

    result = failed_of(await runner.run(cmd))

    assert result.error == "timed out after 0.05 s"
    assert not await exists(s3, bucket, f"{cmd.identifier}/analyze_result.json")


async def test_export_to_csv_lists_the_fields_it_could_not_write(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    # The CSV header is the first batch's fields: a field first seen in a later batch is dropped.
    early = [{"id": i, "name": f"n{i}"} for i in range(60_000)]
    late = [{"id": -1, "name": "late", "extra": "x"}]
    body = b"".join(orjson.dumps(record) + b"\n" for record in early + late)
    assert len(body) > BATCH_BYTES
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/people.ndjson", body)

    result = completed_of(await runner.run(command("export", data_url=url, options={"format": "csv"})))

    artifact = await read_json(s3, result.s3_url)
    assert artifact["result"]["dropped_fields"] == ["extra"]
    assert artifact["result"]["record_count"] == len(early) + 1
    exported, _ = await read(s3, artifact["result"]["url"])
    rows = list(csv.reader(io.StringIO(exported.decode(), newline="")))
    assert rows[0] == ["id", "name"]
    assert rows[-1] == ["-1", "late"]
    assert len(rows) == len(early) + 2
