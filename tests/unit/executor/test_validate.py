"""The validate operation: record counts, required fields, JSON Schema; failures carry the full report."""

from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from libs.common.options import ValidateOptions
from services.executor.data import Dataset
from services.executor.operations import REGISTRY
from services.executor.operations.base import OperationFailedError
from services.executor.operations.validate import MAX_REPORTED_ERRORS, run
from tests.unit.executor._context import make_context

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


async def failure(data: Dataset, opts: ValidateOptions) -> OperationFailedError:
    with pytest.raises(OperationFailedError) as caught:
        await run(data, make_context(opts))
    return caught.value


async def test_validate_reports_valid_when_every_check_passes() -> None:
    opts = options(schema=PERSON_SCHEMA, required=["name"], min_records=1, max_records=2)
    outcome = await run(Dataset(records=list(PEOPLE)), make_context(opts))
    assert outcome.output is None
    assert outcome.result["valid"] is True
    assert outcome.result["errors"] == []
    assert outcome.result["record_count"] == 2
    assert outcome.result["invalid_records"] == 0
    assert outcome.result["shape"] == "records"
    assert outcome.result["checks"] == {
        "parseable": True,
        "encoding": "utf-8",
        "required_fields": ["name"],
        "json_schema": True,
        "min_records": 1,
        "max_records": 2,
    }


async def test_validate_passes_any_parseable_data_without_options() -> None:
    outcome = await run(Dataset(records=[1, "two", None]), make_context(options()))
    assert outcome.result["valid"] is True
    assert outcome.result["record_count"] == 3


async def test_validate_fails_naming_the_path_when_required_field_is_missing_or_null() -> None:
    data = Dataset(records=[{"name": "Ann", "age": 31}, {"age": 42}, {"name": None, "age": 5}])
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
    error = await failure(Dataset(records=[{"id": 1}, 7]), options(required=["id"]))
    assert "$[1]: is not an object" in str(error)


async def test_validate_fails_naming_the_schema_path_when_record_breaks_the_schema() -> None:
    data = Dataset(records=[{"name": "Ann", "age": 31}, {"name": "Bob", "age": "old"}])
    error = await failure(data, options(schema=PERSON_SCHEMA))
    assert "$[1]['age']" in str(error)
    assert "'old' is not of type 'integer'" in str(error)
    assert error.report is not None
    assert error.report["errors"] == [{"path": "$[1]['age']", "message": "'old' is not of type 'integer'"}]


async def test_validate_uses_root_paths_when_data_is_one_document() -> None:
    data = Dataset.of({"age": -1})
    error = await failure(data, options(schema=PERSON_SCHEMA, required=["name"]))
    assert error.report is not None
    assert error.report["shape"] == "document"
    assert [e["path"] for e in reported_errors(error)] == ["$.name", "$['age']", "$"]
    assert str(error).startswith("validation failed: $.name: required field is missing or null")


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"min_records": 3}, "$: 2 records; at least 3 required"),
        ({"max_records": 1}, "$: 2 records; at most 1 allowed"),
    ],
)
async def test_validate_fails_when_record_count_is_out_of_bounds(bounds: dict[str, int], expected: str) -> None:
    error = await failure(Dataset(records=list(PEOPLE)), options(**bounds))
    assert str(error) == f"validation failed: {expected}"
    assert error.report is not None
    assert error.report["invalid_records"] == 0


async def test_validate_summarises_the_first_three_errors_when_there_are_more() -> None:
    data = Dataset(records=[{} for _ in range(5)])
    error = await failure(data, options(required=["id"]))
    assert str(error).endswith("(and 2 more)")
    assert str(error).count("required field is missing") == 3
    assert error.report is not None
    assert len(reported_errors(error)) == 5


async def test_validate_caps_reported_errors_when_there_are_very_many() -> None:
    data = Dataset(records=[{} for _ in range(MAX_REPORTED_ERRORS + 50)])
    error = await failure(data, options(required=["id", "name"]))
    assert error.report is not None
    assert len(reported_errors(error)) == MAX_REPORTED_ERRORS
    assert error.report["errors_truncated"] is True
    assert error.report["invalid_records"] == MAX_REPORTED_ERRORS + 50


def test_validate_options_refuse_an_invalid_json_schema() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        REGISTRY["validate"].options_model.model_validate({"schema": {"type": 5}})


def test_validate_options_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="extra"):
        REGISTRY["validate"].options_model.model_validate({"requried": ["id"]})
