"""The transform operation against S3: default reshaping, each declarative step, and the output it streams out."""

from typing import Any

import orjson
import pytest
from pydantic import JsonValue
from types_aiobotocore_s3 import S3Client

from libs.common.options import TransformOptions
from services.executor.operations.base import OperationContext, OperationFailedError, OperationOutcome
from services.executor.operations.transform import run
from services.executor.records import RecordStream, chunks_of
from services.executor.storage import Storage
from tests.integration.executor._s3 import identifier, pending_uploads, read
from tests.integration.executor.conftest import MAX_DOCUMENT_BYTES


def steps(*values: dict[str, Any]) -> TransformOptions:
    return TransformOptions.model_validate({"steps": list(values)})


def stream(data: JsonValue, chunk_size: int = 7) -> RecordStream:
    return RecordStream(chunks_of(orjson.dumps(data), chunk_size), "json", MAX_DOCUMENT_BYTES)


async def transform(storage: Storage, records: JsonValue, opts: TransformOptions) -> OperationOutcome:
    return await run(stream(records), OperationContext(identifier=identifier(), options=opts, storage=storage))


async def output_of(s3: S3Client, outcome: OperationOutcome) -> list[JsonValue]:
    assert outcome.output_url is not None
    assert outcome.output_format == "ndjson"
    body, content_type = await read(s3, outcome.output_url)
    assert content_type == "application/x-ndjson"
    return [orjson.loads(line) for line in body.splitlines()]


async def test_transform_trims_strings_and_snake_cases_keys_by_default(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(
        storage,
        [{" First Name": "  Ann ", "homeAddress": {"zipCode": " 123 "}, "tags": [" a ", 1]}],
        TransformOptions(),
    )
    assert await output_of(s3, outcome) == [
        {"first_name": "Ann", "home_address": {"zip_code": "123"}, "tags": ["a", 1]}
    ]
    output = outcome.result.pop("output")
    assert outcome.result == {
        "steps": ["default: trim strings, snake_case keys"],
        "records_in": 1,
        "records_out": 1,
        "fields_out": ["first_name", "home_address", "tags"],
    }
    assert isinstance(output, dict)
    assert (output["url"], output["format"]) == (outcome.output_url, "ndjson")


async def test_transform_keeps_a_document_a_document(storage: Storage, s3: S3Client) -> None:
    ctx = OperationContext(identifier=identifier(), options=TransformOptions(), storage=storage)
    outcome = await run(stream({"Key": " v "}), ctx)
    assert outcome.output_url == storage.url(f"{ctx.identifier}/transform_output.json")
    assert outcome.output_format == "json"
    body, content_type = await read(s3, outcome.output_url)
    assert content_type == "application/json"
    assert orjson.loads(body) == {"key": "v"}


async def test_transform_writes_its_output_under_the_objects_identifier(storage: Storage) -> None:
    ctx = OperationContext(identifier=identifier(), options=TransformOptions(), storage=storage)
    outcome = await run(stream([{"a": 1}]), ctx)
    assert outcome.output_url == storage.url(f"{ctx.identifier}/transform_output.ndjson")


async def test_transform_writes_an_empty_output_for_no_records(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(storage, [], TransformOptions())
    assert await output_of(s3, outcome) == []
    assert (outcome.result["records_in"], outcome.result["records_out"]) == (0, 0)


async def test_transform_select_keeps_only_the_listed_fields_in_that_order(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(
        storage, [{"a": 1, "b": 2, "c": 3}, {"c": 4}], steps({"op": "select", "fields": ["c", "a"]})
    )
    assert await output_of(s3, outcome) == [{"c": 3, "a": 1}, {"c": 4, "a": None}]


async def test_transform_drop_removes_the_listed_fields(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(
        storage, [{"a": 1, "b": 2, "c": 3}, {"c": 4}], steps({"op": "drop", "fields": ["a", "c"]})
    )
    assert await output_of(s3, outcome) == [{"b": 2}, {}]


async def test_transform_rename_renames_keys_and_keeps_the_rest(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(storage, [{"a": 1, "b": 2}], steps({"op": "rename", "mapping": {"a": "alpha"}}))
    assert await output_of(s3, outcome) == [{"alpha": 1, "b": 2}]


async def test_transform_cast_converts_each_kind(storage: Storage, s3: S3Client) -> None:
    record: JsonValue = {"i": "42", "f": "3.7", "t": "3.7", "b1": "Yes", "b0": "0", "s": 12, "n": None, "x": "keep"}
    types = {"i": "int", "f": "float", "t": "int", "b1": "bool", "b0": "bool", "s": "str", "n": "int", "m": "int"}
    outcome = await transform(storage, [record], steps({"op": "cast", "types": types}))
    assert await output_of(s3, outcome) == [
        {"i": 42, "f": 3.7, "t": 3, "b1": True, "b0": False, "s": "12", "n": None, "x": "keep"}
    ]


@pytest.mark.parametrize(
    ("value", "kind"),
    [("abc", "int"), ("1.5e400", "int"), ("1.2.3", "float"), ("maybe", "bool"), ([1], "int"), ({"a": 1}, "float")],
)
async def test_transform_cast_fails_naming_record_field_and_value_when_value_cannot_be_cast(
    storage: Storage, s3: S3Client, bucket: str, value: JsonValue, kind: str
) -> None:
    records: list[JsonValue] = [{"v": "1" if kind != "bool" else "true"}, {"v": value}]
    ctx = OperationContext(
        identifier=identifier(), options=steps({"op": "cast", "types": {"v": kind}}), storage=storage
    )
    with pytest.raises(OperationFailedError) as caught:
        await run(stream(records), ctx)
    assert str(caught.value) == f"record 1: cannot cast field 'v' value {value!r} to {kind}"
    key = ctx.output_key("transform_output.ndjson")
    assert await pending_uploads(s3, bucket, key) == []


async def test_transform_default_fills_missing_and_null_fields_only(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(
        storage, [{"a": None}, {"a": 0, "b": "x"}, {}], steps({"op": "default", "values": {"a": 9, "b": "none"}})
    )
    assert await output_of(s3, outcome) == [{"a": 9, "b": "none"}, {"a": 0, "b": "x"}, {"a": 9, "b": "none"}]


async def test_transform_normalize_strips_collapses_and_changes_case(storage: Storage, s3: S3Client) -> None:
    step = {"op": "normalize", "case": "lower", "collapse_whitespace": True}
    outcome = await transform(storage, [{"a": "  Hello   WORLD ", "n": 1}], steps(step))
    assert await output_of(s3, outcome) == [{"a": "hello world", "n": 1}]


async def test_transform_normalize_touches_only_the_listed_fields(storage: Storage, s3: S3Client) -> None:
    step = {"op": "normalize", "fields": ["a"], "case": "upper", "strip": False}
    outcome = await transform(storage, [{"a": " x ", "b": " y "}], steps(step))
    assert await output_of(s3, outcome) == [{"a": " X ", "b": " y "}]


async def test_transform_filter_keeps_records_matching_the_jmespath_expression(storage: Storage, s3: S3Client) -> None:
    records: list[JsonValue] = [
        {"name": "Ann", "age": 31, "tags": ["vip"]},
        {"name": "Bob", "age": 17, "tags": []},
        {"name": "Cid", "age": 45, "tags": []},
    ]
    expression = "age >= `18` && contains(tags, 'vip')"
    outcome = await transform(storage, records, steps({"op": "filter", "expression": expression}))
    assert await output_of(s3, outcome) == [records[0]]
    assert outcome.result["records_in"] == 3
    assert outcome.result["records_out"] == 1


async def test_transform_filter_accepts_non_object_records(storage: Storage, s3: S3Client) -> None:
    outcome = await transform(storage, [1, 0, 5, None], steps({"op": "filter", "expression": "@ > `1`"}))
    assert await output_of(s3, outcome) == [5]


async def test_transform_applies_steps_in_order_and_reports_them(storage: Storage, s3: S3Client) -> None:
    opts = steps(
        {"op": "rename", "mapping": {"Age": "age"}},
        {"op": "cast", "types": {"age": "int"}},
        {"op": "filter", "expression": "age > `20`"},
        {"op": "select", "fields": ["age"]},
    )
    outcome = await transform(storage, [{"Age": "30", "x": 1}, {"Age": "10", "x": 2}], opts)
    assert await output_of(s3, outcome) == [{"age": 30}]
    assert outcome.result["fields_out"] == ["age"]
    assert outcome.result["steps"] == [
        {"op": "rename", "mapping": {"Age": "age"}},
        {"op": "cast", "types": {"age": "int"}},
        {"op": "filter", "expression": "age > `20`"},
        {"op": "select", "fields": ["age"]},
    ]


async def test_transform_fails_when_a_record_step_meets_a_non_object_record(storage: Storage) -> None:
    with pytest.raises(OperationFailedError, match="record 1 is not an object; step 'drop' needs objects"):
        await transform(storage, [{"a": 1}, "text"], steps({"op": "drop", "fields": ["a"]}))


async def test_transform_names_records_by_their_position_in_the_whole_data_across_batches(storage: Storage) -> None:
    records: list[JsonValue] = [{"v": str(i), "pad": "x" * 100} for i in range(30_000)]
    records[25_000] = {"v": "not a number"}
    ctx = OperationContext(
        identifier=identifier(), options=steps({"op": "cast", "types": {"v": "int"}}), storage=storage
    )
    with pytest.raises(OperationFailedError, match=r"^record 25000: cannot cast field 'v'"):
        await run(stream(records, chunk_size=64 * 1024), ctx)  # over 3 MB: several batches
