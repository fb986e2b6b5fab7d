"""The analyze operation: per-field counts, numeric statistics and the most frequent strings."""

import pytest
from pydantic import JsonValue

from libs.common.options import AnalyzeOptions
from services.executor.data import Dataset
from services.executor.operations.analyze import run
from tests.unit.executor._context import make_context


async def analyze(records: list[JsonValue], opts: AnalyzeOptions | None = None) -> dict[str, JsonValue]:
    outcome = await run(Dataset(records=records), make_context(opts or AnalyzeOptions()))
    assert outcome.output is None
    return outcome.result


def field(result: dict[str, JsonValue], name: str) -> dict[str, JsonValue]:
    fields = result["fields"]
    assert isinstance(fields, dict)
    stats = fields[name]
    assert isinstance(stats, dict)
    return stats


async def test_analyze_computes_numeric_statistics() -> None:
    result = await analyze([{"x": 2}, {"x": 4}, {"x": 4.0}, {"x": 4}, {"x": 5}, {"x": 5}, {"x": 7}, {"x": 9}])
    numeric = field(result, "x")["numeric"]
    assert numeric == {
        "count": 8,
        "min": 2.0,
        "max": 9.0,
        "mean": 5.0,
        "stddev": pytest.approx(2.0),
        "sum": 40.0,
    }
    assert field(result, "x")["string"] is None


async def test_analyze_leaves_booleans_out_of_numeric_statistics() -> None:
    stats = field(await analyze([{"x": True}, {"x": 3}, {"x": False}]), "x")
    assert stats["numeric"] == {"count": 1, "min": 3.0, "max": 3.0, "mean": 3.0, "stddev": 0.0, "sum": 3.0}
    assert stats["types"] == {"boolean": 2, "integer": 1}


async def test_analyze_counts_a_boolean_and_an_equal_number_as_distinct() -> None:
    stats = field(await analyze([{"x": True}, {"x": 1}, {"x": 1.0}, {"x": False}, {"x": 0}]), "x")
    assert stats["distinct"] == 4  # true, 1 (== 1.0), false, 0


async def test_analyze_lists_top_strings_by_frequency_with_lengths() -> None:
    records: list[JsonValue] = [{"c": value} for value in ["red", "blue", "red", "green", "red", "blue"]]
    stats = field(await analyze(records, AnalyzeOptions(top=2)), "c")
    assert stats["string"] == {
        "count": 6,
        "top": [{"value": "red", "count": 3}, {"value": "blue", "count": 2}],
        "length": {"min": 3, "max": 5, "mean": pytest.approx(22 / 6)},
    }
    assert stats["numeric"] is None
    assert stats["distinct"] == 3


async def test_analyze_counts_nulls_including_missing_fields() -> None:
    stats = field(await analyze([{"a": 1}, {"a": None}, {}, {"a": 1}]), "a")
    assert stats["count"] == 2
    assert stats["nulls"] == 2
    assert stats["distinct"] == 1
    assert stats["types"] == {"integer": 2}


async def test_analyze_counts_distinct_nested_values() -> None:
    stats = field(await analyze([{"t": [1, 2]}, {"t": [1, 2]}, {"t": {"k": 1}}]), "t")
    assert stats["distinct"] == 2
    assert stats["types"] == {"array": 2, "object": 1}


async def test_analyze_restricts_to_the_requested_fields() -> None:
    result = await analyze([{"a": 1, "b": "x", "c": 2}], AnalyzeOptions(fields=["c", "zzz"]))
    fields = result["fields"]
    assert isinstance(fields, dict)
    assert list(fields) == ["c", "zzz"]
    assert field(result, "zzz")["count"] == 0
    assert result["field_count"] == 2


async def test_analyze_summarises_the_whole_dataset() -> None:
    result = await analyze([{"a": 1}, {"b": "x"}, 5, "text"])
    assert result["record_count"] == 4
    assert result["field_count"] == 2
    assert result["non_object_records"] == 2
    assert result["distinct_method"] == "exact"


async def test_analyze_handles_an_empty_dataset() -> None:
    result = await analyze([])
    assert result["record_count"] == 0
    assert result["fields"] == {}


async def test_analyze_keeps_statistics_finite_when_values_are_near_the_float_limit() -> None:
    numeric = field(await analyze([{"x": 1e300}, {"x": -1e300}]), "x")["numeric"]
    assert numeric == {"count": 2, "min": -1e300, "max": 1e300, "mean": 0.0, "stddev": 1e300, "sum": 0.0}


async def test_analyze_reports_no_sum_when_it_exceeds_the_float_range() -> None:
    numeric = field(await analyze([{"x": 1.5e308}, {"x": 1.5e308}, {"x": 1.5e308}]), "x")["numeric"]
    assert isinstance(numeric, dict)
    assert numeric["sum"] is None
    assert numeric["mean"] == 1.5e308
    assert numeric["stddev"] == 0.0
