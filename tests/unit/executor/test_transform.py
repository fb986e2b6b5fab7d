"""The transform operation: default reshaping, each declarative step, and its output dataset."""

from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from libs.common.options import TransformOptions
from services.executor.data import Dataset
from services.executor.operations.base import OperationFailedError, OperationOutcome
from services.executor.operations.transform import run, snake_case
from tests.unit.executor._context import make_context


def steps(*values: dict[str, Any]) -> TransformOptions:
    return TransformOptions.model_validate({"steps": list(values)})


async def transform(records: list[JsonValue], opts: TransformOptions) -> OperationOutcome:
    return await run(Dataset(records=records), make_context(opts))


def output_of(outcome: OperationOutcome) -> list[JsonValue]:
    assert outcome.output is not None
    return outcome.output.records


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("firstName", "first_name"),
        (" First Name ", "first_name"),
        ("order-id", "order_id"),
        ("already_snake", "already_snake"),
        ("v2Value", "v2_value"),
        ("---", "---"),
    ],
)
def test_snake_case_converts_key_styles(name: str, expected: str) -> None:
    assert snake_case(name) == expected


async def test_transform_trims_strings_and_snake_cases_keys_by_default() -> None:
    outcome = await transform(
        [{" First Name": "  Ann ", "homeAddress": {"zipCode": " 123 "}, "tags": [" a ", 1]}], TransformOptions()
    )
    assert output_of(outcome) == [{"first_name": "Ann", "home_address": {"zip_code": "123"}, "tags": ["a", 1]}]
    assert outcome.result == {
        "steps": ["default: trim strings, snake_case keys"],
        "records_in": 1,
        "records_out": 1,
        "fields_out": ["first_name", "home_address", "tags"],
    }


async def test_transform_keeps_a_document_a_document() -> None:
    outcome = await run(Dataset.of({"Key": " v "}), make_context(TransformOptions()))
    assert outcome.output is not None
    assert outcome.output.is_document
    assert outcome.output.value() == {"key": "v"}


async def test_transform_select_keeps_only_the_listed_fields_in_that_order() -> None:
    outcome = await transform([{"a": 1, "b": 2, "c": 3}, {"c": 4}], steps({"op": "select", "fields": ["c", "a"]}))
    assert output_of(outcome) == [{"c": 3, "a": 1}, {"c": 4, "a": None}]


async def test_transform_drop_removes_the_listed_fields() -> None:
    outcome = await transform([{"a": 1, "b": 2, "c": 3}, {"c": 4}], steps({"op": "drop", "fields": ["a", "c"]}))
    assert output_of(outcome) == [{"b": 2}, {}]


async def test_transform_rename_renames_keys_and_keeps_the_rest() -> None:
    outcome = await transform([{"a": 1, "b": 2}], steps({"op": "rename", "mapping": {"a": "alpha"}}))
    assert output_of(outcome) == [{"alpha": 1, "b": 2}]


async def test_transform_cast_converts_each_kind() -> None:
    record: JsonValue = {"i": "42", "f": "3.7", "t": "3.7", "b1": "Yes", "b0": "0", "s": 12, "n": None, "x": "keep"}
    types = {"i": "int", "f": "float", "t": "int", "b1": "bool", "b0": "bool", "s": "str", "n": "int", "m": "int"}
    outcome = await transform([record], steps({"op": "cast", "types": types}))
    assert output_of(outcome) == [
        {"i": 42, "f": 3.7, "t": 3, "b1": True, "b0": False, "s": "12", "n": None, "x": "keep"}
    ]


@pytest.mark.parametrize(
    ("value", "kind"),
    [("abc", "int"), ("1.5e400", "int"), ("1.2.3", "float"), ("maybe", "bool"), ([1], "int"), ({"a": 1}, "float")],
)
async def test_transform_cast_fails_naming_record_field_and_value_when_value_cannot_be_cast(
    value: JsonValue, kind: str
) -> None:
    records: list[JsonValue] = [{"v": "1" if kind != "bool" else "true"}, {"v": value}]
    with pytest.raises(OperationFailedError) as caught:
        await transform(records, steps({"op": "cast", "types": {"v": kind}}))
    assert str(caught.value) == f"record 1: cannot cast field 'v' value {value!r} to {kind}"


async def test_transform_default_fills_missing_and_null_fields_only() -> None:
    outcome = await transform(
        [{"a": None}, {"a": 0, "b": "x"}, {}], steps({"op": "default", "values": {"a": 9, "b": "none"}})
    )
    assert output_of(outcome) == [{"a": 9, "b": "none"}, {"a": 0, "b": "x"}, {"a": 9, "b": "none"}]


async def test_transform_normalize_strips_collapses_and_changes_case() -> None:
    step = {"op": "normalize", "case": "lower", "collapse_whitespace": True}
    outcome = await transform([{"a": "  Hello   WORLD ", "n": 1}], steps(step))
    assert output_of(outcome) == [{"a": "hello world", "n": 1}]


async def test_transform_normalize_touches_only_the_listed_fields() -> None:
    step = {"op": "normalize", "fields": ["a"], "case": "upper", "strip": False}
    outcome = await transform([{"a": " x ", "b": " y "}], steps(step))
    assert output_of(outcome) == [{"a": " X ", "b": " y "}]


async def test_transform_filter_keeps_records_matching_the_jmespath_expression() -> None:
    records: list[JsonValue] = [
        {"name": "Ann", "age": 31, "tags": ["vip"]},
        {"name": "Bob", "age": 17, "tags": []},
        {"name": "Cid", "age": 45, "tags": []},
    ]
    outcome = await transform(records, steps({"op": "filter", "expression": "age >= `18` && contains(tags, 'vip')"}))
    assert output_of(outcome) == [records[0]]
    assert outcome.result["records_in"] == 3
    assert outcome.result["records_out"] == 1


async def test_transform_filter_accepts_non_object_records() -> None:
    outcome = await transform([1, 0, 5, None], steps({"op": "filter", "expression": "@ > `1`"}))
    assert output_of(outcome) == [5]


async def test_transform_applies_steps_in_order_and_reports_them() -> None:
    opts = steps(
        {"op": "rename", "mapping": {"Age": "age"}},
        {"op": "cast", "types": {"age": "int"}},
        {"op": "filter", "expression": "age > `20`"},
        {"op": "select", "fields": ["age"]},
    )
    outcome = await transform([{"Age": "30", "x": 1}, {"Age": "10", "x": 2}], opts)
    assert output_of(outcome) == [{"age": 30}]
    assert outcome.result["fields_out"] == ["age"]
    assert outcome.result["steps"] == [
        {"op": "rename", "mapping": {"Age": "age"}},
        {"op": "cast", "types": {"age": "int"}},
        {"op": "filter", "expression": "age > `20`"},
        {"op": "select", "fields": ["age"]},
    ]


async def test_transform_fails_when_a_record_step_meets_a_non_object_record() -> None:
    with pytest.raises(OperationFailedError, match="record 1 is not an object; step 'drop' needs objects"):
        await transform([{"a": 1}, "text"], steps({"op": "drop", "fields": ["a"]}))


def test_transform_options_refuse_an_invalid_jmespath_expression() -> None:
    with pytest.raises(ValidationError, match="not a valid JMESPath expression"):
        steps({"op": "filter", "expression": "age >"})


def test_transform_options_refuse_an_unknown_step() -> None:
    with pytest.raises(ValidationError):
        steps({"op": "explode", "fields": ["a"]})
