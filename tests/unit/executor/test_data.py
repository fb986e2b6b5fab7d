"""services.executor.data: parsing, serialising and format detection of an object's data."""

import csv
import io

import orjson
import pytest
from pydantic import JsonValue

from services.executor.data import DataError, DataFormat, Dataset, detect_format, parse, serialize

RECORDS: list[JsonValue] = [{"id": 1, "name": "Ann", "tags": ["a"]}, {"id": 2, "name": "Bob", "tags": []}]


class TestParse:
    def test_parse_returns_records_when_json_is_an_array(self) -> None:
        dataset = parse(orjson.dumps(RECORDS), "json")
        assert dataset.records == RECORDS
        assert not dataset.is_document
        assert dataset.value() == RECORDS

    def test_parse_returns_one_document_when_json_is_an_object(self) -> None:
        dataset = parse(b'{"a": {"b": 1}}', "json")
        assert dataset.records == [{"a": {"b": 1}}]
        assert dataset.is_document
        assert dataset.value() == {"a": {"b": 1}}

    def test_parse_accepts_a_scalar_json_document(self) -> None:
        dataset = parse(b"42", "json")
        assert dataset.is_document
        assert dataset.value() == 42

    def test_parse_skips_a_utf8_byte_order_mark(self) -> None:
        assert parse(b'\xef\xbb\xbf{"a": 1}', "json").value() == {"a": 1}

    def test_parse_reads_one_record_per_line_when_ndjson(self) -> None:
        raw = b'{"id": 1}\n\n{"id": 2}\r\n  \n{"id": 3}'
        assert parse(raw, "ndjson").records == [{"id": 1}, {"id": 2}, {"id": 3}]

    def test_parse_keeps_line_separator_characters_inside_ndjson_strings(self) -> None:
        # orjson (like most JSON writers) emits U+2028 and U+0085 raw; they are not NDJSON line breaks.
        records: list[JsonValue] = [{"text": "a\u2028b"}, {"text": "c\x85d"}]
        raw = b"".join(orjson.dumps(record) + b"\n" for record in records)
        assert parse(raw, "ndjson").records == records

    def test_parse_returns_string_cells_keyed_by_header_when_csv(self) -> None:
        raw = b'id,name,note\n1,Ann,"x, y"\n2,Bob,"line\nbreak"\n'
        assert parse(raw, "csv").records == [
            {"id": "1", "name": "Ann", "note": "x, y"},
            {"id": "2", "name": "Bob", "note": "line\nbreak"},
        ]

    def test_parse_returns_no_records_when_csv_has_only_a_header(self) -> None:
        dataset = parse(b"id,name\n", "csv")
        assert dataset.records == []
        assert not dataset.is_document

    def test_parse_raises_data_error_when_csv_row_has_more_cells_than_header(self) -> None:
        with pytest.raises(DataError, match="CSV line 3 has more cells than the header"):
            parse(b"a,b\n1,2\n3,4,5\n", "csv")

    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    def test_parse_raises_data_error_naming_the_byte_when_not_utf8(self, fmt: DataFormat) -> None:
        with pytest.raises(DataError, match=r"not UTF-8 text \(byte 5\)"):
            parse(b'{"a":\xff}', fmt)

    def test_parse_raises_data_error_when_json_is_malformed(self) -> None:
        with pytest.raises(DataError, match="data is not valid JSON") as caught:
            parse(b'{"a": 1,', "json")
        assert caught.value.__cause__ is None  # the message says it all; no decoder traceback attached

    def test_parse_raises_data_error_naming_the_line_when_ndjson_line_is_malformed(self) -> None:
        with pytest.raises(DataError, match="line 3 is not valid JSON"):
            parse(b'{"a": 1}\n{"a": 2}\n{"a": \n', "ndjson")

    def test_data_error_is_a_value_error(self) -> None:
        assert issubclass(DataError, ValueError)


class TestSerialize:
    def test_serialize_json_round_trips_records(self) -> None:
        dataset = Dataset(records=list(RECORDS))
        assert orjson.loads(serialize(dataset, "json")) == RECORDS

    def test_serialize_json_writes_the_document_not_a_list_when_document(self) -> None:
        assert orjson.loads(serialize(Dataset.of({"a": 1}), "json")) == {"a": 1}

    def test_serialize_ndjson_writes_one_line_per_record(self) -> None:
        body = serialize(Dataset(records=list(RECORDS)), "ndjson")
        assert body.endswith(b"\n")
        assert [orjson.loads(line) for line in body.splitlines()] == RECORDS
        assert parse(body, "ndjson").records == RECORDS

    def test_serialize_csv_writes_the_union_of_fields_as_header(self) -> None:
        dataset = Dataset(records=[{"a": 1, "b": "x"}, {"b": "y", "c": 2.5}])
        rows = list(csv.reader(io.StringIO(serialize(dataset, "csv").decode(), newline="")))
        assert rows == [["a", "b", "c"], ["1", "x", ""], ["", "y", "2.5"]]

    def test_serialize_csv_renders_null_bool_and_nested_values(self) -> None:
        dataset = Dataset(records=[{"n": None, "t": True, "f": False, "list": [1, "a"], "obj": {"k": 1}}])
        rows = list(csv.DictReader(io.StringIO(serialize(dataset, "csv").decode(), newline="")))
        assert rows == [{"n": "", "t": "true", "f": "false", "list": '[1,"a"]', "obj": '{"k":1}'}]

    def test_serialize_csv_writes_non_object_records_to_a_value_column(self) -> None:
        dataset = Dataset(records=[{"a": 1}, 2, "three"])
        rows = list(csv.DictReader(io.StringIO(serialize(dataset, "csv").decode(), newline="")))
        assert rows == [{"a": "1", "value": ""}, {"a": "", "value": "2"}, {"a": "", "value": "three"}]

    def test_serialize_csv_round_trips_through_parse_as_strings(self) -> None:
        dataset = Dataset(records=[{"id": 1, "name": "Ann, Jr."}, {"id": 2, "name": 'say "hi"'}])
        assert parse(serialize(dataset, "csv"), "csv").records == [
            {"id": "1", "name": "Ann, Jr."},
            {"id": "2", "name": 'say "hi"'},
        ]


class TestDataset:
    def test_field_names_keep_first_seen_order_and_skip_non_objects(self) -> None:
        dataset = Dataset(records=[{"b": 1, "a": 2}, 3, {"c": 4, "a": 5}])
        assert dataset.field_names() == ["b", "a", "c"]

    def test_of_wraps_a_list_as_records(self) -> None:
        dataset = Dataset.of([1, 2])
        assert dataset.records == [1, 2]
        assert not dataset.is_document


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
