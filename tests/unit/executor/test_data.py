"""services.executor.data: format detection, and RecordEncoder writing records batch by batch."""

import csv
import io

import orjson
import pytest
from pydantic import JsonValue

from services.executor.data import DataFormat, RecordEncoder, detect_format, field_names
from services.executor.records import RecordStream, chunks_of

RECORDS: list[JsonValue] = [{"id": 1, "name": "Ann", "tags": ["a"]}, {"id": 2, "name": "Bob", "tags": []}]


def encode(fmt: DataFormat, *batches: list[JsonValue], document: bool = False) -> bytes:
    encoder = RecordEncoder(fmt, document=document)
    return b"".join(encoder.encode(batch) for batch in batches) + encoder.finish()


async def read_back(data: bytes, fmt: DataFormat, chunk_size: int = 3) -> tuple[list[JsonValue], RecordStream]:
    stream = RecordStream(chunks_of(data, chunk_size), fmt, max_document_bytes=1024 * 1024)
    records = [record async for batch in stream.batches() for record in batch]
    return records, stream


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


class TestRecordEncoder:
    def test_json_writes_one_array_across_batches(self) -> None:
        assert orjson.loads(encode("json", RECORDS[:1], [], RECORDS[1:])) == RECORDS
        assert encode("json", RECORDS) == orjson.dumps(RECORDS)

    def test_json_writes_the_document_not_a_list_when_document(self) -> None:
        assert orjson.loads(encode("json", [{"a": 1}], document=True)) == {"a": 1}

    async def test_a_document_with_no_record_left_is_an_empty_array(self) -> None:
        body = encode("json", [], document=True)  # transform filtered the document away
        assert body == b"[]"
        assert (await read_back(body, "json"))[0] == []

    def test_ndjson_writes_one_line_per_record(self) -> None:
        body = encode("ndjson", RECORDS[:1], RECORDS[1:])
        assert body.endswith(b"\n")
        assert [orjson.loads(line) for line in body.splitlines()] == RECORDS

    def test_csv_writes_the_fields_of_the_first_batch_as_header(self) -> None:
        body = encode("csv", [{"a": 1, "b": "x"}, {"b": "y", "c": 2.5}])
        assert csv_rows(body) == [["a", "b", "c"], ["1", "x", ""], ["", "y", "2.5"]]

    def test_csv_renders_null_bool_and_nested_values(self) -> None:
        body = encode("csv", [{"n": None, "t": True, "f": False, "list": [1, "a"], "obj": {"k": 1}}])
        rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
        assert rows == [{"n": "", "t": "true", "f": "false", "list": '[1,"a"]', "obj": '{"k":1}'}]

    def test_csv_writes_non_object_records_to_a_value_column(self) -> None:
        body = encode("csv", [{"a": 1}, 2, "three"])
        rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
        assert rows == [{"a": "1", "value": ""}, {"a": "", "value": "2"}, {"a": "", "value": "three"}]

    def test_csv_lists_fields_first_seen_after_the_first_batch_as_dropped(self) -> None:
        encoder = RecordEncoder("csv")
        body = encoder.encode([{"a": 1}]) + encoder.encode([{"a": 2, "late": "x"}, {"b": 3, "late": "y"}])
        body += encoder.finish()
        assert csv_rows(body) == [["a"], ["1"], ["2"], [""]]
        assert encoder.dropped_fields == {"late", "b"}
        assert encoder.records == 3

    def test_csv_drops_nothing_when_every_field_is_in_the_header(self) -> None:
        encoder = RecordEncoder("csv")
        encoder.encode([{"a": 1, "b": 2}])
        encoder.encode([{"b": 3}])
        assert encoder.dropped_fields == set()

    @pytest.mark.parametrize(("fmt", "expected"), [("json", b"[]"), ("ndjson", b""), ("csv", b"\r\n")])
    def test_no_records_encode_to_an_empty_output(self, fmt: DataFormat, expected: bytes) -> None:
        encoder = RecordEncoder(fmt)
        assert encoder.encode([]) + encoder.finish() == expected
        assert encoder.records == 0

    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    async def test_no_records_read_back_as_no_records(self, fmt: DataFormat) -> None:
        records, stream = await read_back(encode(fmt, []), fmt)
        assert records == []
        assert stream.stats.record_count == 0

    @pytest.mark.parametrize("fmt", ["json", "ndjson"])
    async def test_records_round_trip_through_a_record_stream(self, fmt: DataFormat) -> None:
        records: list[JsonValue] = [
            {"id": i, "name": f"Zoë {i}", "nested": {"list": [i, None, True]}, "ratio": i / 7} for i in range(500)
        ]
        records += ["text", 3, None, [1, 2]]
        body = encode(fmt, records[:100], records[100:101], records[101:])
        assert (await read_back(body, fmt))[0] == records

    async def test_csv_round_trips_through_a_record_stream_as_strings(self) -> None:
        records: list[JsonValue] = [
            {"id": 1, "name": "Ann, Jr.", "note": "two\nlines"},
            {"id": 2, "name": 'say "hi"', "note": "東京 🙂"},
        ]
        body = encode("csv", records[:1], records[1:])
        assert (await read_back(body, "csv", chunk_size=1))[0] == [
            {"id": "1", "name": "Ann, Jr.", "note": "two\nlines"},
            {"id": "2", "name": 'say "hi"', "note": "東京 🙂"},
        ]

    async def test_a_document_round_trips_as_a_document(self) -> None:
        body = encode("json", [{"a": {"b": [1, 2]}}], document=True)
        records, stream = await read_back(body, "json")
        assert records == [{"a": {"b": [1, 2]}}]
        assert stream.stats.is_document


class TestFieldNames:
    def test_field_names_keep_first_seen_order_and_skip_non_objects(self) -> None:
        assert field_names([{"b": 1, "a": 2}, 3, {"c": 4, "a": 5}]) == ["b", "a", "c"]


class TestDetectFormat:
    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    def test_detect_format_prefers_the_explicit_format(self, fmt: DataFormat) -> None:
        assert detect_format(fmt, "s3://b/data.csv", "application/json") == fmt

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("s3://b/data.ndjson", "ndjson"),
            ("s3://b/DATA.JSONL", "ndjson"),
            ("s3://b/dir/data.csv", "csv"),
            ("s3://b/data.json", "json"),
        ],
    )
    def test_detect_format_uses_the_key_suffix_when_not_explicit(self, key: str, expected: DataFormat) -> None:
        assert detect_format(None, key, "text/csv") == expected

    @pytest.mark.parametrize(
        ("content_type", "expected"),
        [
            ("text/csv; charset=utf-8", "csv"),
            ("application/x-ndjson", "ndjson"),
            ("application/json", "json"),
        ],
    )
    def test_detect_format_uses_the_content_type_when_key_has_no_known_suffix(
        self, content_type: str, expected: DataFormat
    ) -> None:
        assert detect_format(None, "s3://b/data", content_type) == expected

    def test_detect_format_defaults_to_json(self) -> None:
        assert detect_format(None, "s3://b/data.bin", "application/octet-stream") == "json"
        assert detect_format("xml", "s3://b/data") == "json"
