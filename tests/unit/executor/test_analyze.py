"""The analyze operation: per-field counts, numeric statistics and the most frequent strings, in one pass."""

import statistics

import orjson
import pytest
from pydantic import JsonValue

from libs.common.options import AnalyzeOptions
from services.executor.operations._sketch import EXACT_LIMIT
from services.executor.operations.analyze import TOP_LIMIT, run
from services.executor.records import RecordStream
from tests.unit.executor._context import make_context, records_of, stream_of


async def analyze_stream(records: RecordStream, opts: AnalyzeOptions | None = None) -> dict[str, JsonValue]:
    outcome = await run(records, make_context(opts or AnalyzeOptions()))
    assert outcome.output_url is None
    assert outcome.output_format is None
    return outcome.result


async def analyze(records: list[JsonValue], opts: AnalyzeOptions | None = None) -> dict[str, JsonValue]:
    return await analyze_stream(records_of(records), opts)


def field(result: dict[str, JsonValue], name: str) -> dict[str, JsonValue]:
    fields = result["fields"]
    assert isinstance(fields, dict)
    stats = fields[name]
    assert isinstance(stats, dict)
    return stats


def ndjson(records: list[JsonValue]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


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
    assert stats["distinct_exact"] is True


async def test_analyze_lists_top_strings_by_frequency_with_lengths() -> None:
    records: list[JsonValue] = [{"c": value} for value in ["red", "blue", "red", "green", "red", "blue"]]
    stats = field(await analyze(records, AnalyzeOptions(top=2)), "c")
    assert stats["string"] == {
        "count": 6,
        "top": [{"value": "red", "count": 3}, {"value": "blue", "count": 2}],
        "top_exact": True,
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
    assert field(result, "a")["distinct_exact"] is True
    assert field(result, "b")["distinct_exact"] is True


async def test_analyze_handles_an_empty_dataset() -> None:
    result = await analyze([])
    assert result["record_count"] == 0
    assert result["fields"] == {}


async def test_analyze_treats_a_single_document_as_one_record() -> None:
    result = await analyze_stream(stream_of(b'{"a": 1, "b": "x"}'))
    assert result["record_count"] == 1
    assert field(result, "a")["count"] == 1


async def test_analyze_keeps_statistics_finite_when_values_are_near_the_float_limit() -> None:
    numeric = field(await analyze([{"x": 1e300}, {"x": -1e300}]), "x")["numeric"]
    assert numeric == {"count": 2, "min": -1e300, "max": 1e300, "mean": 0.0, "stddev": 1e300, "sum": 0.0}


async def test_analyze_reports_no_sum_when_it_exceeds_the_float_range() -> None:
    numeric = field(await analyze([{"x": 1.5e308}, {"x": 1.5e308}, {"x": 1.5e308}]), "x")["numeric"]
    assert isinstance(numeric, dict)
    assert numeric["sum"] is None
    assert numeric["mean"] == 1.5e308
    assert numeric["stddev"] == 0.0


async def test_analyze_merges_batches_into_the_statistics_of_the_whole() -> None:
    values = [((i * 7919) % 10007) / 7 - 500 for i in range(20_000)]
    records: list[JsonValue] = [{"x": v, "s": f"v{i % 13}" * (i % 5 + 1)} for i, v in enumerate(values)]
    data = ndjson(records)

    many = await analyze_stream(stream_of(data, "ndjson", chunk_size=4096))  # a batch per 4 KiB chunk
    one = await analyze_stream(stream_of(data, "ndjson", chunk_size=len(data)))

    numeric = field(many, "x")["numeric"]
    assert numeric == {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": pytest.approx(statistics.fmean(values), rel=1e-12),
        "stddev": pytest.approx(statistics.pstdev(values), rel=1e-9),
        "sum": pytest.approx(sum(values), rel=1e-12),
    }
    assert numeric == pytest.approx(field(one, "x")["numeric"], rel=1e-9)
    assert field(many, "s") == field(one, "s")


async def test_analyze_estimates_distinct_values_beyond_the_exact_limit() -> None:
    count = EXACT_LIMIT * 5
    records: list[JsonValue] = [{"id": i, "group": i % 7} for i in range(count)]
    result = await analyze_stream(stream_of(ndjson(records), "ndjson", chunk_size=64 * 1024))
    ids, groups = field(result, "id"), field(result, "group")
    assert ids["distinct_exact"] is False
    distinct = ids["distinct"]
    assert isinstance(distinct, int)
    assert abs(distinct - count) / count < 0.03
    assert (groups["distinct"], groups["distinct_exact"]) == (7, True)


async def test_analyze_keeps_the_most_frequent_strings_once_there_are_too_many_to_count_exactly() -> None:
    unique: list[JsonValue] = [{"s": f"unique-{i}"} for i in range(TOP_LIMIT + 100)]
    common: list[JsonValue] = [{"s": "common"}, {"s": "runner-up"}, {"s": "common"}] * 500
    data = ndjson(common[:300] + unique + common[300:])
    stats = field(await analyze_stream(stream_of(data, "ndjson", chunk_size=256 * 1024), AnalyzeOptions(top=2)), "s")
    string = stats["string"]
    assert isinstance(string, dict)
    assert string["top_exact"] is False
    assert string["top"] == [{"value": "common", "count": 1000}, {"value": "runner-up", "count": 500}]
    assert string["count"] == TOP_LIMIT + 100 + 1500
