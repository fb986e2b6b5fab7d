"""Artifacts keep to their documented contract: docs/schemas/ and docs/artifacts.md.

Every built-in operation runs for real (OperationRunner, Storage, an S3 endpoint: moto unless TEST_S3_ENDPOINT
is set) on JSON-array, NDJSON and CSV objects, an inline payload and the object's own record; each artifact is
read back from S3 and validated against the envelope schema and its operation's result schema. The schemas
themselves, and the examples in docs/artifacts.md, are checked too.
"""

import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError
from jsonschema import Draft202012Validator
from pydantic import JsonValue
from types_aiobotocore_s3 import S3Client

from libs.common.domain import Operation, artifact_key
from libs.common.events import OperationCompletedV1, OperationFailedV1, RunOperationV1
from libs.common.options import OPTIONS_MODELS
from libs.common.s3 import parse_s3_url, s3_client
from libs.common.settings import S3Settings
from services.executor.operations import registry
from services.executor.service import ARTIFACT_SCHEMA_VERSION, OperationRunner
from services.executor.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
DOC = ROOT / "docs" / "artifacts.md"
OPERATIONS = [op.value for op in Operation]
EXECUTOR_ID = "executor-contract"
PRESIGN_EXPIRY = 900


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return schema


ENVELOPE = load_schema("artifact.schema.json")
RESULTS = {op: load_schema(f"{op}.result.schema.json") for op in OPERATIONS}


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(instance)]


def assert_matches_schemas(artifact: dict[str, Any]) -> None:
    assert schema_errors(ENVELOPE, artifact) == []
    assert schema_errors(RESULTS[artifact["operation"]], artifact["result"]) == []


# --- data ---------------------------------------------------------------------------------------------------

RECORDS: list[JsonValue] = [
    {
        "id": 1,
        "Name": "  Ada   Lovelace ",
        "country": "gb",
        "amount": 120.5,
        "paid": True,
        "coupon": None,
        "tags": ["vip", "early"],
        "address": {"city": "London"},
    },
    {"id": 2, "Name": "Grace Hopper", "country": "us", "amount": 89, "paid": False, "coupon": "WELCOME", "tags": []},
    {"id": 3, "Name": "Alan Turing", "country": "gb", "amount": "15.00", "paid": True},
]
"""Mixed on purpose: an integer, a float and a string amount, a null and missing fields, nested values."""

CSV_BODY = (
    b"id,Name,country,amount,paid,coupon\r\n"
    b"1,  Ada   Lovelace ,gb,120.5,true,\r\n"
    b"2,Grace Hopper,us,89,false,WELCOME\r\n"
    b"3,Alan Turing,gb,15.00,true,\r\n"
)
"""The same records as CSV, where every cell is a string."""

RECORD_METADATA: dict[str, JsonValue] = {"team": "contract", "batch": 7, "labels": ["a", "b"]}

TABULAR = ("json", "ndjson", "csv", "payload")
SOURCES = (*TABULAR, "record")


@dataclass(frozen=True)
class Prepared:
    fields: dict[str, Any]
    """What the command carries about its data: data_url and data_format, payload, or metadata."""
    raw: bytes
    """The bytes the executor reads (and counts and hashes)."""
    format: str
    record_count: int


def body_of(source: str) -> bytes:
    if source == "json":
        return orjson.dumps(RECORDS)
    if source == "ndjson":
        return b"".join(orjson.dumps(record) + b"\n" for record in RECORDS)
    return CSV_BODY


async def prepare(s3: S3Client, bucket: str, source: str, identifier: str) -> Prepared:
    if source == "payload":
        return Prepared({"payload": RECORDS}, orjson.dumps(RECORDS), "json", len(RECORDS))
    if source == "record":
        raw = orjson.dumps({"identifier": identifier, "metadata": RECORD_METADATA})
        return Prepared({"metadata": RECORD_METADATA}, raw, "json", 1)
    raw = body_of(source)
    # No extension in the key: the format is the one the command names.
    url = await put(s3, bucket, f"incoming/{uuid.uuid4().hex}", raw)
    return Prepared({"data_url": url, "data_format": source}, raw, source, len(RECORDS))


# --- S3 and the runner --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts_bucket() -> str:
    return f"contract-artifacts-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def s3(s3_endpoint: str, artifacts_bucket: str) -> AsyncIterator[S3Client]:
    async with s3_client(S3Settings(s3_endpoint_url=s3_endpoint, s3_bucket=artifacts_bucket)) as client:
        await client.create_bucket(Bucket=artifacts_bucket)
        yield client


@pytest.fixture
def storage(s3: S3Client, artifacts_bucket: str) -> Storage:
    return Storage(s3, artifacts_bucket, attempts=2, backoff_seconds=0.01, presign_expiry=PRESIGN_EXPIRY)


@pytest.fixture
def runner(storage: Storage) -> OperationRunner:
    return OperationRunner(storage, executor_id=EXECUTOR_ID, max_document_bytes=1024 * 1024)


async def put(s3: S3Client, bucket: str, key: str, body: bytes) -> str:
    await s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


async def get(s3: S3Client, url: str) -> bytes:
    bucket, key = parse_s3_url(url)
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        return await body.read()


async def exists(s3: S3Client, url: str) -> bool:
    bucket, key = parse_s3_url(url)
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def new_identifier() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def command(operation: str, identifier: str, *, index: int = 0, **fields: Any) -> RunOperationV1:
    return RunOperationV1(
        object_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        identifier=identifier,
        operation=operation,
        index=index,
        total=index + 1,
        **fields,
    )


async def artifact_of(s3: S3Client, bucket: str, cmd: RunOperationV1) -> dict[str, Any]:
    artifact: dict[str, Any] = orjson.loads(
        await get(s3, f"s3://{bucket}/{artifact_key(cmd.identifier, cmd.operation)}")
    )
    return artifact


def completed(result: OperationCompletedV1 | OperationFailedV1) -> OperationCompletedV1:
    assert isinstance(result, OperationCompletedV1), getattr(result, "error", result)
    return result


def failed(result: OperationCompletedV1 | OperationFailedV1) -> OperationFailedV1:
    assert isinstance(result, OperationFailedV1), result
    return result


def assert_envelope(artifact: dict[str, Any], cmd: RunOperationV1, status: str) -> None:
    """The fields every artifact takes from its command and its run."""
    assert artifact["schema_version"] == ARTIFACT_SCHEMA_VERSION
    assert artifact["object_id"] == str(cmd.object_id)
    assert artifact["task_id"] == str(cmd.task_id)
    assert (artifact["identifier"], artifact["operation"], artifact["index"]) == (
        cmd.identifier,
        cmd.operation,
        cmd.index,
    )
    assert artifact["status"] == status
    assert artifact["executor_id"] == EXECUTOR_ID


def assert_input(artifact: dict[str, Any], cmd: RunOperationV1, prepared: Prepared) -> None:
    kind = "s3" if cmd.data_url else ("payload" if cmd.payload is not None else "record")
    assert artifact["input"] == {
        "url": cmd.data_url,
        "kind": kind,
        "format": prepared.format,
        "size_bytes": len(prepared.raw),
        "sha256": hashlib.sha256(prepared.raw).hexdigest(),
        "record_count": prepared.record_count,
    }


# --- the schemas themselves ---------------------------------------------------------------------------------


def test_there_is_an_envelope_schema_and_a_result_schema_per_built_in_operation() -> None:
    names = {path.name for path in SCHEMAS.glob("*.json")}
    assert names == {"artifact.schema.json", *(f"{op}.result.schema.json" for op in OPERATIONS)}


@pytest.mark.parametrize("name", sorted(path.name for path in SCHEMAS.glob("*.json")))
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_envelope_schema_is_for_the_schema_version_the_executor_writes() -> None:
    # Bumping ARTIFACT_SCHEMA_VERSION means a field was removed or changed meaning: update the schemas and the doc.
    assert ENVELOPE["properties"]["schema_version"]["const"] == ARTIFACT_SCHEMA_VERSION


# --- every operation, on every kind of input ----------------------------------------------------------------

TRANSFORM_STEPS: list[JsonValue] = [
    {"op": "rename", "mapping": {"Name": "name"}},
    {"op": "normalize", "fields": ["name"], "collapse_whitespace": True, "case": "lower"},
    {"op": "cast", "types": {"id": "int", "amount": "float", "paid": "bool"}},
    {"op": "default", "values": {"coupon": "NONE"}},
    {"op": "filter", "expression": "amount > `20`"},
    {"op": "drop", "fields": ["tags"]},
    {"op": "select", "fields": ["id", "name", "amount", "paid", "coupon"]},
]

DEFAULT_OPTIONS: list[tuple[str, str, dict[str, JsonValue]]] = [
    ("validate", "defaults", {}),
    ("transform", "defaults", {}),
    ("transform", "no-steps", {"steps": []}),
    ("enrich", "defaults", {}),
    ("analyze", "defaults", {}),
    ("export", "json", {"format": "json"}),
    ("export", "ndjson", {"format": "ndjson"}),
    ("export", "csv", {"format": "csv"}),
]
"""Options that suit any data, the object's own record included."""

RECORD_OPTIONS: list[tuple[str, str, dict[str, JsonValue]]] = [
    (
        "validate",
        "checks",
        {
            "required": ["id", "Name"],
            "schema": {
                "type": "object",
                "required": ["id", "Name"],
                "properties": {"id": {"type": ["integer", "string"]}, "Name": {"type": "string", "minLength": 1}},
            },
            "min_records": 1,
            "max_records": 100,
        },
    ),
    ("transform", "steps", {"steps": TRANSFORM_STEPS}),
    ("enrich", "metadata", {"metadata": {"owner": "contract-tests", "tags": ["a", "b"], "nested": {"level": 1}}}),
    ("analyze", "fields", {"fields": ["amount", "Name", "absent"], "top": 2}),
]
"""Options that need the test records (fields named id, Name, amount...)."""


def run_cases() -> Iterator[Any]:
    for source in SOURCES:
        for operation, name, options in DEFAULT_OPTIONS:
            yield pytest.param(source, operation, options, id=f"{operation}-{name}-{source}")
    for source in TABULAR:
        for operation, name, options in RECORD_OPTIONS:
            yield pytest.param(source, operation, options, id=f"{operation}-{name}-{source}")


@pytest.mark.parametrize(("source", "operation", "options"), list(run_cases()))
async def test_the_artifact_of_each_operation_matches_the_schemas(
    runner: OperationRunner,
    s3: S3Client,
    artifacts_bucket: str,
    source: str,
    operation: str,
    options: dict[str, JsonValue],
) -> None:
    identifier = new_identifier()
    prepared = await prepare(s3, artifacts_bucket, source, identifier)
    cmd = command(operation, identifier, index=3, options=options, **prepared.fields)

    event = completed(await runner.run(cmd))

    assert event.s3_url == f"s3://{artifacts_bucket}/{identifier}/{operation}_result.json"
    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_matches_schemas(artifact)
    assert_envelope(artifact, cmd, "succeeded")
    assert artifact["error"] is None
    assert_input(artifact, cmd, prepared)
    assert (artifact["output_url"], artifact["output_format"]) == (event.output_url, event.output_format)
    assert artifact["duration_ms"] == pytest.approx(event.duration_ms, abs=0.001)
    result = artifact["result"]
    if operation == "transform":
        output = await get(s3, result["output"]["url"])
        extension = "json" if source == "record" else "ndjson"
        assert result["output"] == {
            "url": f"s3://{artifacts_bucket}/{identifier}/transform_output.{extension}",
            "format": extension,
            "size_bytes": len(output),
            "sha256": hashlib.sha256(output).hexdigest(),
        }
        assert (artifact["output_url"], artifact["output_format"]) == (result["output"]["url"], extension)
        assert result["records_in"] == prepared.record_count
    else:
        assert (artifact["output_url"], artifact["output_format"]) == (None, None)
    if operation == "export":
        exported = await get(s3, result["url"])
        assert result["url"] == f"s3://{artifacts_bucket}/{identifier}/export.{options['format']}"
        assert (result["size_bytes"], result["sha256"]) == (len(exported), hashlib.sha256(exported).hexdigest())
        assert result["record_count"] == prepared.record_count
        assert result["presigned_url_expires_in"] == PRESIGN_EXPIRY
    if operation in ("validate", "analyze"):
        assert result["record_count"] == prepared.record_count
    if operation == "enrich":
        assert result["content"]["sha256"] == artifact["input"]["sha256"]
        assert result["metadata"] == options.get("metadata", {})
    if operation == "analyze" and "fields" in options:
        assert list(result["fields"]) == options["fields"]


async def test_a_following_operation_reads_the_transform_output(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    identifier = new_identifier()
    prepared = await prepare(s3, artifacts_bucket, "csv", identifier)
    first = command("transform", identifier, options={"steps": TRANSFORM_STEPS}, **prepared.fields)
    done = completed(await runner.run(first))
    assert done.output_url is not None

    cmd = command("analyze", identifier, index=1, data_url=done.output_url, data_format=done.output_format)
    completed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_matches_schemas(artifact)
    output = await get(s3, done.output_url)
    assert artifact["input"] == {
        "url": done.output_url,
        "kind": "s3",
        "format": "ndjson",
        "size_bytes": len(output),
        "sha256": hashlib.sha256(output).hexdigest(),
        "record_count": 2,
    }
    assert artifact["result"]["fields"]["amount"]["types"] == {"number": 2}


EDGE_DATA: list[Any] = [
    pytest.param(b"[]", "json", id="empty-array"),
    pytest.param(b"", "ndjson", id="empty-ndjson"),
    pytest.param(b"id,name\r\n", "csv", id="csv-header-only"),
    pytest.param(orjson.dumps([1, 2.5, "a", None, True, [1, 2], {"k": "v"}]), "json", id="not-objects"),
    pytest.param(b'"just a string"', "json", id="scalar-document"),
    pytest.param(b'{"x": 1.7e308, "s": ""}\n{"x": 1.7e308, "s": null}\n{"x": null}\n', "ndjson", id="float-limit"),
]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("raw", "data_format"), EDGE_DATA)
async def test_artifacts_of_edge_case_data_match_the_schemas(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str, operation: str, raw: bytes, data_format: str
) -> None:
    identifier = new_identifier()
    url = await put(s3, artifacts_bucket, f"incoming/{uuid.uuid4().hex}", raw)
    cmd = command(operation, identifier, data_url=url, data_format=data_format)

    completed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_matches_schemas(artifact)
    assert artifact["input"]["size_bytes"] == len(raw)
    assert artifact["input"]["sha256"] == hashlib.sha256(raw).hexdigest()


async def test_analyze_reports_null_for_a_sum_beyond_the_float_range(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    url = await put(s3, artifacts_bucket, f"incoming/{uuid.uuid4().hex}", b'{"x": 1.7e308}\n{"x": 1.7e308}\n')
    cmd = command("analyze", new_identifier(), data_url=url, data_format="ndjson")
    completed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)

    assert_matches_schemas(artifact)
    numeric = artifact["result"]["fields"]["x"]["numeric"]
    assert numeric["sum"] is None
    assert numeric["mean"] == pytest.approx(1.7e308)
    assert artifact["result"]["fields"]["x"]["string"] is None


async def test_a_plugin_operation_artifact_has_the_same_envelope(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    if "redact" not in registry():
        pytest.skip("the example plugin (examples/redact_plugin) is not installed")
    cmd = command("redact", new_identifier(), payload=RECORDS, options={"fields": ["Name"]})

    event = completed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert schema_errors(ENVELOPE, artifact) == []
    assert artifact["result"] == {"records_redacted": len(RECORDS)}
    assert (artifact["output_url"], artifact["output_format"]) == (event.output_url, "ndjson")


# --- failures -----------------------------------------------------------------------------------------------

INVALID_NDJSON = (
    b'{"id": 1, "Name": "Ada"}\n'
    b'{"id": "two", "Name": null}\n'
    b"[1, 2]\n"
    b'{"id": 4, "Name": "Edsger", "extra": {"deep": [1, "bad"]}}\n'
)
INVALID_OPTIONS: dict[str, JsonValue] = {
    "required": ["id", "Name"],
    "schema": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "extra": {"type": "object", "properties": {"deep": {"type": "array", "items": {"type": "integer"}}}},
        },
    },
}


def assert_failed_with_report(artifact: dict[str, Any], cmd: RunOperationV1, event: OperationFailedV1) -> None:
    assert_matches_schemas(artifact)
    assert_envelope(artifact, cmd, "failed")
    assert artifact["error"] == event.error
    assert artifact["error"].startswith("validation failed: ")
    assert (artifact["output_url"], artifact["output_format"]) == (None, None)
    assert artifact["result"]["valid"] is False


async def test_a_failed_validate_stores_its_report_as_a_failed_artifact(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    url = await put(s3, artifacts_bucket, f"incoming/{uuid.uuid4().hex}.ndjson", INVALID_NDJSON)
    cmd = command("validate", new_identifier(), index=0, data_url=url, options=INVALID_OPTIONS)

    event = failed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_failed_with_report(artifact, cmd, event)
    assert artifact["input"]["format"] == "ndjson"
    result = artifact["result"]
    assert result["errors"] == [
        {"path": "$[1].Name", "message": "required field is missing or null"},
        {"path": "$[1].id", "message": "'two' is not of type 'integer'"},
        {"path": "$[2]", "message": "is not an object, so it has none of the required fields"},
        {"path": "$[2]", "message": "[1, 2] is not of type 'object'"},
        {"path": "$[3].extra.deep[1]", "message": "'bad' is not of type 'integer'"},
    ]
    assert (result["record_count"], result["invalid_records"], result["error_count"]) == (4, 3, 5)
    assert result["checks"] == {
        "parseable": True,
        "encoding": "utf-8",
        "format": "ndjson",
        "required_fields": ["id", "Name"],
        "json_schema": True,
        "min_records": None,
        "max_records": None,
    }


async def test_a_failed_validate_of_a_single_document_reports_paths_from_the_document(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    cmd = command("validate", new_identifier(), metadata=RECORD_METADATA, options={"required": ["id"]})

    event = failed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_failed_with_report(artifact, cmd, event)
    assert artifact["input"]["kind"] == "record"
    assert artifact["result"]["shape"] == "document"
    assert artifact["result"]["errors"] == [{"path": "$.id", "message": "required field is missing or null"}]


@pytest.mark.parametrize(
    ("raw", "options", "message"),
    [
        pytest.param(b"[]", {"min_records": 1}, "0 records; at least 1 required", id="min_records"),
        pytest.param(orjson.dumps(RECORDS), {"max_records": 2}, "3 records; at most 2 allowed", id="max_records"),
    ],
)
async def test_a_validate_failing_on_the_record_count_reports_it_at_the_root(
    runner: OperationRunner,
    s3: S3Client,
    artifacts_bucket: str,
    raw: bytes,
    options: dict[str, JsonValue],
    message: str,
) -> None:
    url = await put(s3, artifacts_bucket, f"incoming/{uuid.uuid4().hex}.json", raw)
    cmd = command("validate", new_identifier(), data_url=url, options=options)

    event = failed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_failed_with_report(artifact, cmd, event)
    assert artifact["result"]["errors"] == [{"path": "$", "message": message}]
    assert (artifact["result"]["invalid_records"], artifact["result"]["error_count"]) == (0, 1)


async def test_a_validate_report_lists_the_first_hundred_errors_and_counts_them_all(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    raw = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(150))
    url = await put(s3, artifacts_bucket, f"incoming/{uuid.uuid4().hex}.ndjson", raw)
    cmd = command("validate", new_identifier(), data_url=url, options={"required": ["id"]})

    event = failed(await runner.run(cmd))

    artifact = await artifact_of(s3, artifacts_bucket, cmd)
    assert_failed_with_report(artifact, cmd, event)
    result = artifact["result"]
    assert (result["error_count"], len(result["errors"]), result["errors_truncated"]) == (150, 100, True)
    assert result["errors"][-1] == {"path": "$[99].id", "message": "required field is missing or null"}


@pytest.mark.parametrize(
    ("operation", "raw", "options", "error"),
    [
        pytest.param(
            "transform",
            b'{"n": "1"}\n{"n": "x"}\n',
            {"steps": [{"op": "cast", "types": {"n": "int"}}]},
            "record 1: cannot cast field 'n' value 'x' to int",
            id="transform-cast",
        ),
        pytest.param(
            "transform",
            b'{"n": 1}\n[2]\n',
            {"steps": [{"op": "select", "fields": ["n"]}]},
            "record 1 is not an object; step 'select' needs objects",
            id="transform-not-an-object",
        ),
        pytest.param(
            "transform", b"{}\n", {"steps": [{"op": "explode"}]}, "invalid options: ", id="transform-bad-options"
        ),
        pytest.param("analyze", b'{"n": 1}\n{"n": \n', {}, "NDJSON line 2 is not valid JSON", id="invalid-data"),
        pytest.param("enrich", None, {}, "input data not found at s3://", id="missing-data"),
    ],
)
async def test_a_failure_without_a_report_stores_no_artifact(
    runner: OperationRunner,
    s3: S3Client,
    artifacts_bucket: str,
    operation: str,
    raw: bytes | None,
    options: dict[str, JsonValue],
    error: str,
) -> None:
    identifier = new_identifier()
    key = f"incoming/{uuid.uuid4().hex}"
    url = await put(s3, artifacts_bucket, key, raw) if raw is not None else f"s3://{artifacts_bucket}/{key}"
    cmd = command(operation, identifier, data_url=url, data_format="ndjson", options=options)

    event = failed(await runner.run(cmd))

    assert event.error.startswith(error)
    assert not await exists(s3, f"s3://{artifacts_bucket}/{artifact_key(identifier, operation)}")
    assert not await exists(s3, f"s3://{artifacts_bucket}/{identifier}/transform_output.ndjson")


async def test_an_operation_can_follow_a_transform_that_filtered_out_a_single_document(
    runner: OperationRunner, s3: S3Client, artifacts_bucket: str
) -> None:
    identifier = new_identifier()
    steps: list[JsonValue] = [{"op": "filter", "expression": "missing == `1`"}]
    first = command("transform", identifier, payload={"a": 1}, options={"steps": steps})
    done = completed(await runner.run(first))
    transform = await artifact_of(s3, artifacts_bucket, first)
    assert_matches_schemas(transform)
    assert transform["result"]["records_out"] == 0

    cmd = command("export", identifier, index=1, data_url=done.output_url, data_format=done.output_format)
    completed(await runner.run(cmd))
    assert_matches_schemas(await artifact_of(s3, artifacts_bucket, cmd))


# --- docs/artifacts.md --------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```json[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SECTION = re.compile(r"^## (?:`([a-z_]+)`)?", re.MULTILINE)
"""A level-2 heading: an operation's section when it is "## `<operation>`", else a section of no operation."""


@dataclass(frozen=True)
class Block:
    line: int
    section: str | None
    """The operation whose section holds the block, if any."""
    value: Any


def doc_blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    sections = [(match.start(), match.group(1)) for match in _SECTION.finditer(text)]
    blocks = []
    for match in _FENCE.finditer(text):
        section: str | None = None
        for start, name in sections:
            if start < match.start():
                section = name
        blocks.append(Block(text.count("\n", 0, match.start()) + 1, section, json.loads(match.group(1))))
    return blocks


BLOCKS = doc_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line-{block.line}" for block in BLOCKS])
def test_each_json_example_in_the_doc_is_a_valid_artifact_or_valid_options(block: Block) -> None:
    if isinstance(block.value, dict) and "schema_version" in block.value:
        assert_matches_schemas(block.value)
        if block.section is not None:
            assert block.value["operation"] == block.section
    else:
        # Anything else is the options of the operation whose section it is in.
        assert block.section in OPERATIONS, f"a JSON block outside an operation's section (line {block.line})"
        OPTIONS_MODELS[Operation(block.section)].model_validate(block.value)


def test_the_doc_has_an_example_artifact_of_each_operation_and_of_a_failed_validate() -> None:
    artifacts = [block.value for block in BLOCKS if isinstance(block.value, dict) and "schema_version" in block.value]
    assert {(a["operation"], a["status"]) for a in artifacts} >= {
        *((op, "succeeded") for op in OPERATIONS),
        ("validate", "failed"),
    }


def property_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names.update(value)
            names |= property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= property_names(item)
    return names


@pytest.mark.parametrize("name", sorted(path.name for path in SCHEMAS.glob("*.json")))
def test_the_doc_describes_every_field_of_each_schema(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    quoted = {word for span in re.findall(r"`([^`\n]+)`", text) for word in re.findall(r"[A-Za-z_][\w]*", span)}
    assert property_names(load_schema(name)) - quoted == set()


def test_the_doc_points_to_the_schemas_and_the_plugin_mechanism() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in sorted(path.name for path in SCHEMAS.glob("*.json")):
        assert name in text
    assert "object_processing.operations" in text
    assert "examples/redact_plugin" in text
