"""services.executor.records: an object's bytes, in chunks of any size, as batches of records and input stats."""

import csv
import hashlib
import io
import time

import orjson
import pytest
from pydantic import JsonValue

from services.executor.data import DataError, DataFormat
from services.executor.records import BATCH_BYTES, RecordStream, chunks_of
from tests.unit.executor._context import stream_of

BOM = b"\xef\xbb\xbf"
RECORDS: list[JsonValue] = [
    {"id": 1, "name": "Zoë", "city": "Tōkyō 東京", "tags": ["a", "🙂"], "score": 1.5, "ok": True, "none": None},
    {"id": 2, "name": "Ann, Jr.", "note": 'say "hi"', "nested": {"k": [1, {"deep": "ü"}]}},
    {"id": 3, "text": "line\nbreak and \u2028 separator \x85 next-line"},
    "a string record",
    42,
]
CSV_BYTES = (
    'id,name,note\r\n1,Zoë,"multi\nline, with ""quotes"" and é"\r\n2,東京,plain\r\n3,"🙂",""\r\n4,short\r\n'
).encode()
CSV_ROWS: list[JsonValue] = [
    {"id": "1", "name": "Zoë", "note": 'multi\nline, with "quotes" and é'},
    {"id": "2", "name": "東京", "note": "plain"},
    {"id": "3", "name": "🙂", "note": ""},
    {"id": "4", "name": "short", "note": ""},  # a short row is padded with empty cells
]
NDJSON_BYTES = (
    b"\n".join(orjson.dumps(r) for r in RECORDS[:3]) + b"\r\n\n   \n" + b"\n".join(orjson.dumps(r) for r in RECORDS[3:])
)  # blank lines and a CRLF between records, and no newline after the last one
SAMPLES: dict[DataFormat, tuple[bytes, list[JsonValue]]] = {
    "json": (orjson.dumps(RECORDS, option=orjson.OPT_INDENT_2), RECORDS),
    "ndjson": (NDJSON_BYTES, RECORDS),
    "csv": (CSV_BYTES, CSV_ROWS),
}


async def read_all(stream: RecordStream) -> list[list[JsonValue]]:
    return [batch async for batch in stream.batches()]


async def records_in(data: bytes, fmt: DataFormat, chunk_size: int = BATCH_BYTES) -> list[JsonValue]:
    return [record for batch in await read_all(stream_of(data, fmt, chunk_size=chunk_size)) for record in batch]


class TestChunking:
    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    @pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 6, 7])
    async def test_tiny_chunks_give_the_records_of_one_chunk(self, fmt: DataFormat, chunk_size: int) -> None:
        # Chunks this small cut records, multi-byte characters and quoted CSV newlines at every position.
        data, expected = SAMPLES[fmt]
        assert await records_in(data, fmt, chunk_size) == await records_in(data, fmt) == expected

    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    @pytest.mark.parametrize("chunk_size", [1, 3])
    async def test_tiny_chunks_give_the_stats_of_one_chunk(self, fmt: DataFormat, chunk_size: int) -> None:
        data, expected = SAMPLES[fmt]
        small, whole = stream_of(data, fmt, chunk_size=chunk_size), stream_of(data, fmt)
        await read_all(small)
        await read_all(whole)
        assert small.stats.size_bytes == whole.stats.size_bytes == len(data)
        assert small.stats.sha256 == whole.stats.sha256 == hashlib.sha256(data).hexdigest()
        assert small.stats.record_count == whole.stats.record_count == len(expected)

    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    async def test_large_data_comes_in_several_batches_of_bounded_size(self, fmt: DataFormat) -> None:
        records: list[JsonValue] = [{"id": str(i), "text": f"é {i} " * (i % 30)} for i in range(40_000)]
        if fmt == "csv":
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=["id", "text"])
            writer.writeheader()
            writer.writerows(records)  # type: ignore[arg-type]
            data = buffer.getvalue().encode()
        elif fmt == "ndjson":
            data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        else:
            data = orjson.dumps(records)
        assert len(data) > 3 * BATCH_BYTES

        batches = await read_all(stream_of(data, fmt, chunk_size=BATCH_BYTES // 4 + 7))

        assert [r for batch in batches for r in batch] == records
        assert len(batches) >= 3
        assert max(len(batch) for batch in batches) < len(records) // 2


class TestJson:
    async def test_array_items_are_the_records(self) -> None:
        stream = stream_of(orjson.dumps(RECORDS))
        assert [r for batch in await read_all(stream) for r in batch] == RECORDS
        assert not stream.stats.is_document
        assert stream.stats.record_count == len(RECORDS)

    async def test_array_numbers_keep_their_json_types(self) -> None:
        assert await records_in(b"[1, 1.0, -2.5e3, 0, true, null]", "json") == [1, 1.0, -2500.0, 0, True, None]

    async def test_empty_array_has_no_records(self) -> None:
        stream = stream_of(b" [ ] ")
        assert await read_all(stream) == []
        assert (stream.stats.record_count, stream.stats.is_document) == (0, False)

    @pytest.mark.parametrize(("raw", "value"), [(b'{"a": {"b": 1}}', {"a": {"b": 1}}), (b"42", 42), (b'"x"', "x")])
    @pytest.mark.parametrize("chunk_size", [1, BATCH_BYTES])
    async def test_a_value_that_is_not_an_array_is_one_document(
        self, raw: bytes, value: JsonValue, chunk_size: int
    ) -> None:
        stream = stream_of(b"\n  " + raw + b"\n", chunk_size=chunk_size)
        assert await read_all(stream) == [[value]]
        assert stream.stats.is_document
        assert stream.stats.record_count == 1

    @pytest.mark.parametrize("chunk_size", [1, 100, BATCH_BYTES])
    async def test_a_document_over_the_limit_is_refused(self, chunk_size: int) -> None:
        raw = orjson.dumps({"text": "x" * 5000})
        with pytest.raises(DataError, match="over 4096 bytes; give large data as an array, NDJSON or CSV"):
            await read_all(stream_of(raw, chunk_size=chunk_size, max_document_bytes=4096))

    async def test_a_document_at_the_limit_is_read(self) -> None:
        raw = orjson.dumps({"text": "x" * 5000})
        assert await read_all(stream_of(raw, max_document_bytes=len(raw))) == [[{"text": "x" * 5000}]]

    async def test_an_array_over_the_document_limit_streams(self) -> None:
        raw = orjson.dumps([{"text": "x" * 100}] * 100)
        assert len(await records_in(raw, "json", chunk_size=64)) == 100  # max_document_bytes is 1 MiB

    @pytest.mark.parametrize("raw", [b'{"a": 1,', b'[{"a": 1},', b"[1, 2] 3", b"[1, 2]]", b"", b"   ", b"[1 2]"])
    @pytest.mark.parametrize("chunk_size", [1, BATCH_BYTES])
    async def test_malformed_json_raises_data_error(self, raw: bytes, chunk_size: int) -> None:
        with pytest.raises(DataError, match="data is not valid JSON") as caught:
            await read_all(stream_of(raw, chunk_size=chunk_size))
        assert caught.value.__cause__ is None  # the message says it all; no decoder traceback attached


class TestNdjson:
    async def test_one_record_per_line(self) -> None:
        raw = b'{"id": 1}\n\n{"id": 2}\r\n  \n{"id": 3}'
        assert await records_in(raw, "ndjson") == [{"id": 1}, {"id": 2}, {"id": 3}]

    async def test_line_separator_characters_inside_strings_are_not_line_breaks(self) -> None:
        # orjson (like most JSON writers) emits U+2028 and U+0085 raw; they are not NDJSON line breaks.
        records: list[JsonValue] = [{"text": "a\u2028b"}, {"text": "c\x85d"}]
        raw = b"".join(orjson.dumps(record) + b"\n" for record in records)
        assert await records_in(raw, "ndjson", chunk_size=3) == records

    async def test_empty_data_has_no_records(self) -> None:
        stream = stream_of(b"\n \n", "ndjson")
        assert await read_all(stream) == []
        assert stream.stats.record_count == 0

    @pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, BATCH_BYTES])
    async def test_a_malformed_line_raises_data_error_naming_it(self, chunk_size: int) -> None:
        raw = b'{"a": 1}\n\n{"a": 2}\r\n   \n{"a": \n{"a": 3}\n'
        with pytest.raises(DataError, match="NDJSON line 5 is not valid JSON") as caught:
            await read_all(stream_of(raw, "ndjson", chunk_size=chunk_size))
        assert caught.value.__cause__ is None

    @pytest.mark.parametrize("chunk_size", [1, BATCH_BYTES])
    async def test_a_malformed_last_line_without_newline_is_named(self, chunk_size: int) -> None:
        with pytest.raises(DataError, match="NDJSON line 3 is not valid JSON"):
            await read_all(stream_of(b"1\n2\n[3", "ndjson", chunk_size=chunk_size))

    @pytest.mark.parametrize("chunk_size", [1, BATCH_BYTES])
    async def test_a_line_holding_two_values_raises_data_error(self, chunk_size: int) -> None:
        with pytest.raises(DataError, match="NDJSON line 2 is not valid JSON"):
            await read_all(stream_of(b"1\n2, 3\n4\n", "ndjson", chunk_size=chunk_size))


class TestCsv:
    async def test_rows_are_string_cells_keyed_by_the_header(self) -> None:
        raw = b'id,name,note\n1,Ann,"x, y"\n2,Bob,"line\nbreak"\n'
        assert await records_in(raw, "csv") == [
            {"id": "1", "name": "Ann", "note": "x, y"},
            {"id": "2", "name": "Bob", "note": "line\nbreak"},
        ]

    async def test_a_last_row_without_newline_is_read(self) -> None:
        assert await records_in(b"a,b\n1,2\n3,4", "csv", chunk_size=2) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]

    @pytest.mark.parametrize("raw", [b"id,name\n", b"id,name", b""])
    async def test_a_header_alone_or_nothing_has_no_records(self, raw: bytes) -> None:
        stream = stream_of(raw, "csv")
        assert await read_all(stream) == []
        assert (stream.stats.record_count, stream.stats.is_document) == (0, False)

    async def test_blank_lines_are_skipped(self) -> None:
        assert await records_in(b"a\n1\n\n2\n", "csv") == [{"a": "1"}, {"a": "2"}]

    @pytest.mark.parametrize("chunk_size", [1, 4, BATCH_BYTES])
    async def test_a_row_wider_than_the_header_raises_data_error(self, chunk_size: int) -> None:
        with pytest.raises(DataError, match="a CSV row has 3 cells but the header has 2"):
            await read_all(stream_of(b"a,b\n1,2\n3,4,5\n", "csv", chunk_size=chunk_size))

    async def test_a_stray_quote_inside_a_field_costs_linear_time(self) -> None:
        # A quote inside an unquoted field (12" = 12 inches) leaves an odd count of quotes before every later
        # newline; finding the last record end must not recount from the start for each of them.
        raw = b'size,n\n12" screen,0\n' + b"".join(b"x,%d\n" % i for i in range(200_000))
        started = time.perf_counter()
        records = await records_in(raw, "csv", chunk_size=64 * 1024)
        assert time.perf_counter() - started < 10  # about 1 s; minutes when quadratic
        assert len(records) == 200_001
        assert records[0] == {"size": '12" screen', "n": "0"}


class TestEncoding:
    @pytest.mark.parametrize(
        ("fmt", "raw", "expected"),
        [
            ("json", b'{"a": 1}', [{"a": 1}]),
            ("json", b"[1, 2]", [1, 2]),
            ("json", b" [1, 2]", [1, 2]),
            ("ndjson", b'{"a": 1}\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
            ("ndjson", b'{"a": 1}', [{"a": 1}]),
            ("csv", b"a,b\n1,2\n", [{"a": "1", "b": "2"}]),
        ],
    )
    @pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, BATCH_BYTES])
    async def test_a_utf8_byte_order_mark_is_skipped(
        self, fmt: DataFormat, raw: bytes, expected: list[JsonValue], chunk_size: int
    ) -> None:
        stream = stream_of(BOM + raw, fmt, chunk_size=chunk_size)
        assert [r for batch in await read_all(stream) for r in batch] == expected
        assert stream.stats.size_bytes == len(BOM) + len(raw)  # counted and hashed as stored
        assert stream.stats.is_document == (raw == b'{"a": 1}' and fmt == "json")

    @pytest.mark.parametrize("chunk_size", [1, 3, BATCH_BYTES])
    async def test_bad_utf8_in_ndjson_raises_data_error_naming_the_line(self, chunk_size: int) -> None:
        with pytest.raises(DataError, match=r"NDJSON line 2 is not valid JSON: .*UTF-8"):
            await read_all(stream_of(b'{"a": "\xc3\xa9"}\n{"a": "\xff"}\n', "ndjson", chunk_size=chunk_size))

    @pytest.mark.parametrize("chunk_size", [1, 3, BATCH_BYTES])
    async def test_bad_utf8_in_csv_raises_data_error(self, chunk_size: int) -> None:
        with pytest.raises(DataError, match="CSV is not UTF-8 text near byte"):
            await read_all(stream_of(b"a,b\n1,\xc3\xa9\n2,\xff\n", "csv", chunk_size=chunk_size))

    async def test_bad_utf8_in_csv_names_the_byte_when_read_in_one_chunk(self) -> None:
        with pytest.raises(DataError, match=r"near byte 11$"):
            await read_all(stream_of(b"a,b\n1,\xc3\xa9\n2,\xff\n", "csv"))

    @pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b'[{"a": "\xff"}]', b'["ok", "\xe2\x82"]'])
    @pytest.mark.parametrize("chunk_size", [1, BATCH_BYTES])
    async def test_bad_utf8_in_json_raises_data_error(self, raw: bytes, chunk_size: int) -> None:
        with pytest.raises(DataError, match=r"data is not valid JSON: .*UTF-?8"):
            await read_all(stream_of(raw, chunk_size=chunk_size))

    def test_data_error_is_a_value_error(self) -> None:
        assert issubclass(DataError, ValueError)


class TestStats:
    @pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
    async def test_stats_are_complete_after_reading(self, fmt: DataFormat) -> None:
        data, expected = SAMPLES[fmt]
        stream = stream_of(data, fmt, chunk_size=5)
        assert stream.stats.sha256 == ""  # nothing read yet
        await read_all(stream)
        assert stream.stats.size_bytes == len(data)
        assert stream.stats.sha256 == hashlib.sha256(data).hexdigest()
        assert stream.stats.record_count == len(expected)
        assert stream.stats.is_document is False
        assert stream.format == fmt

    async def test_stats_of_a_document(self) -> None:
        raw = b'{"a": [1, 2, 3]}'
        stream = stream_of(raw)
        await read_all(stream)
        assert (stream.stats.size_bytes, stream.stats.record_count, stream.stats.is_document) == (len(raw), 1, True)
        assert stream.stats.sha256 == hashlib.sha256(raw).hexdigest()

    async def test_stats_of_empty_data(self) -> None:
        stream = stream_of(b"", "ndjson")
        await read_all(stream)
        assert (stream.stats.size_bytes, stream.stats.record_count) == (0, 0)
        assert stream.stats.sha256 == hashlib.sha256(b"").hexdigest()


class TestChunksOf:
    async def test_chunks_of_cuts_bytes_into_pieces_of_the_size_given(self) -> None:
        assert [chunk async for chunk in chunks_of(b"abcdefg", 3)] == [b"abc", b"def", b"g"]
        assert [chunk async for chunk in chunks_of(b"", 3)] == []
