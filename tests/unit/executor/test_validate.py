"""The validate operation: record counts, required fields, JSON Schema; failures carry the full report."""

from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from libs.common.options import ValidateOptions
from services.executor.operations import registry
from services.executor.operations.base import OperationFailedError
from services.executor.operations.validate import MAX_REPORTED_ERRORS, run
from services.executor.records import RecordStream
from tests.unit.executor._context import document_of, make_context, records_of, stream_of

PEOPLE: list[JsonValue] = [{"name": "Ann", "age": 31}, {"name": "Bob", "age": 42}]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def options(**values: Any) -> ValidateOptions:
    return ValidateOptions.model_validate(values)


def reported_errors(error: OperationFailedError) -> list[dict[str, JsonValue]]:
    assert error.report is not None
    errors = error.report["errors"]
    assert isinstance(errors, list)
    return [e for e in errors if isinstance(e, dict)]


async def failure(data: RecordStream, opts: ValidateOptions) -> OperationFailedError:
    with pytest.raises(OperationFailedError) as caught:
        await run(data, make_context(opts))
    return caught.value


async def test_validate_reports_valid_when_every_check_passes() -> None:
    opts = options(schema=PERSON_SCHEMA, required=["name"], min_records=1, max_records=2)
    outcome = await run(records_of(PEOPLE), make_context(opts))
    assert outcome.output_url is None
    assert outcome.result["valid"] is True
    assert outcome.result["errors"] == []
    assert outcome.result["record_count"] == 2
    assert outcome.result["invalid_records"] == 0
    assert outcome.result["shape"] == "records"
    assert outcome.result["checks"] == {
        "parseable": True,
        "encoding": "utf-8",
        "format": "json",
        "required_fields": ["name"],
        "json_schema": True,
        "min_records": 1,
        "max_records": 2,
    }


async def test_validate_passes_any_parseable_data_without_options() -> None:
    outcome = await run(records_of([1, "two", None]), make_context(options()))
    assert outcome.result["valid"] is True
    assert outcome.result["record_count"] == 3


async def test_validate_fails_naming_the_path_when_required_field_is_missing_or_null() -> None:
    data = records_of([{"name": "Ann", "age": 31}, {"age": 42}, {"name": None, "age": 5}])
    error = await failure(data, options(required=["name"]))
    assert str(error) == (
        "validation failed: $[1].name: required field is missing or null; $[2].name: required field is missing or null"
    )
    assert error.report is not None
    assert error.report["valid"] is False
    assert error.report["invalid_records"] == 2
    assert error.report["errors"] == [
        {"path": "$[1].name", "message": "required field is missing or null"},
        {"path": "$[2].name", "message": "required field is missing or null"},
    ]


async def test_validate_fails_when_required_fields_are_asked_of_a_non_object_record() -> None:
    error = await failure(records_of([{"id": 1}, 7]), options(required=["id"]))
    assert "$[1]: is not an object" in str(error)


async def test_validate_fails_naming_the_schema_path_when_record_breaks_the_schema() -> None:
    data = records_of([{"name": "Ann", "age": 31}, {"name": "Bob", "age": "old", "tags": [1, "x"]}])
    schema = PERSON_SCHEMA | {"properties": PERSON_SCHEMA["properties"] | {"tags": {"items": {"type": "integer"}}}}
    error = await failure(data, options(schema=schema))
    assert "$[1].age" in str(error)
    assert "'old' is not of type 'integer'" in str(error)
    assert error.report is not None
    assert reported_errors(error) == [
        {"path": "$[1].age", "message": "'old' is not of type 'integer'"},
        {"path": "$[1].tags[1]", "message": "'x' is not of type 'integer'"},
    ]


async def test_validate_uses_root_paths_when_data_is_one_document() -> None:
    data = document_of({"age": -1})
    error = await failure(data, options(schema=PERSON_SCHEMA, required=["name"]))
    assert error.report is not None
    assert error.report["shape"] == "document"
    assert [e["path"] for e in reported_errors(error)] == ["$.name", "$.age", "$"]
    assert str(error).startswith("validation failed: $.name: required field is missing or null")


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"min_records": 3}, "$: 2 records; at least 3 required"),
        ({"max_records": 1}, "$: 2 records; at most 1 allowed"),
    ],
)
async def test_validate_fails_when_record_count_is_out_of_bounds(bounds: dict[str, int], expected: str) -> None:
    error = await failure(records_of(PEOPLE), options(**bounds))
    assert str(error) == f"validation failed: {expected}"
    assert error.report is not None
    assert error.report["invalid_records"] == 0


async def test_validate_summarises_the_first_three_errors_when_there_are_more() -> None:
    data = records_of([{} for _ in range(5)])
    error = await failure(data, options(required=["id"]))
    assert str(error).endswith("(and 2 more)")
    assert str(error).count("required field is missing") == 3
    assert error.report is not None
    assert len(reported_errors(error)) == 5


async def test_validate_caps_reported_errors_when_there_are_very_many() -> None:
    data = records_of([{} for _ in range(MAX_REPORTED_ERRORS + 50)])
    error = await failure(data, options(required=["id", "name"]))
    assert error.report is not None
    assert len(reported_errors(error)) == MAX_REPORTED_ERRORS
    assert error.report["errors_truncated"] is True
    assert error.report["invalid_records"] == MAX_REPORTED_ERRORS + 50
    assert error.report["error_count"] == 2 * (MAX_REPORTED_ERRORS + 50)


async def test_validate_names_records_by_their_position_in_the_whole_data_across_batches() -> None:
    raw = b"".join(b'{"id": %d}\n' % i if i % 1000 else b'{"name": "no id"}\n' for i in range(1, 5001))
    error = await failure(stream_of(raw, "ndjson", chunk_size=1000), options(required=["id"]))
    assert [e["path"] for e in reported_errors(error)] == [f"$[{i - 1}].id" for i in range(1000, 5001, 1000)]
    assert error.report is not None
    assert error.report["record_count"] == 5000
    checks = error.report["checks"]
    assert isinstance(checks, dict)
    assert checks["format"] == "ndjson"


def test_validate_options_refuse_an_invalid_json_schema() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        registry()["validate"].options_model.model_validate({"schema": {"type": 5}})


def test_validate_options_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="extra"):
        registry()["validate"].options_model.model_validate({"requried": ["id"]})
