"""Data formats: detection, and streaming encoders that write records batch by batch."""

import csv
import io
from typing import Literal, TypeAlias

import orjson
from pydantic import JsonValue

DataFormat: TypeAlias = Literal["json", "ndjson", "csv"]

CONTENT_TYPES: dict[DataFormat, str] = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
}

EXTENSIONS: tuple[tuple[str, DataFormat], ...] = (
    (".ndjson", "ndjson"),
    (".jsonl", "ndjson"),
    (".csv", "csv"),
    (".json", "json"),
)


class DataError(ValueError):
    """The data cannot be read as the format it claims to be."""


def detect_format(explicit: str | None, key: str, content_type: str | None = None) -> DataFormat:
    """An explicit format wins, then the key's extension, then the content type; JSON when nothing tells."""
    for fmt in CONTENT_TYPES:
        if explicit == fmt:
            return fmt
    lowered = key.lower()
    for suffix, fmt in EXTENSIONS:
        if lowered.endswith(suffix):
            return fmt
    if content_type:
        media_type = content_type.split(";")[0].strip()
        for fmt, known in CONTENT_TYPES.items():
            if media_type == known:
                return fmt
    return "json"


def field_names(records: list[JsonValue]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
    return list(seen)


class RecordEncoder:
    """Encodes batches of records into one output, in order, without holding more than a batch.

    JSON output is an array (or, for a single-document input, that document). CSV columns are the fields
    of the first batch (plus `value` for records that are not objects); fields first seen later are not
    written, and are listed in `dropped_fields`.
    """

    def __init__(self, fmt: DataFormat, document: bool = False) -> None:
        self.format = fmt
        self.document = document
        self.records = 0
        self.dropped_fields: set[str] = set()
        self._header: list[str] | None = None

    def encode(self, batch: list[JsonValue]) -> bytes:
        if not batch:
            return b""
        first = self.records == 0
        self.records += len(batch)
        if self.format == "ndjson":
            return b"".join(orjson.dumps(record) + b"\n" for record in batch)
        if self.format == "json":
            if self.document:
                return orjson.dumps(batch[0])
            items = b",".join(orjson.dumps(record) for record in batch)
            return (b"[" if first else b",") + items
        return self._csv(batch)

    def finish(self) -> bytes:
        if self.format == "json" and not (self.document and self.records):
            # A document filtered away leaves no records: an empty array, not an empty (unreadable) output.
            return b"]" if self.records else b"[]"
        if self.format == "csv" and self._header is None:
            return b"\r\n"  # an empty CSV: a header with no columns
        return b""

    def _csv(self, batch: list[JsonValue]) -> bytes:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        if self._header is None:
            self._header = field_names(batch)
            if "value" not in self._header and any(not isinstance(record, dict) for record in batch):
                self._header.append("value")
            writer.writerow(self._header)
        header = self._header
        known = set(header)
        rows = []
        for record in batch:
            row = record if isinstance(record, dict) else {"value": record}
            if not known.issuperset(row):
                self.dropped_fields.update(row.keys() - known)
            rows.append([v if type(v) in _PLAIN else _csv_cell(v) for v in map(row.get, header)])
        writer.writerows(rows)
        return buffer.getvalue().encode()


_PLAIN = frozenset({str, int, float})


def _csv_cell(value: JsonValue) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value
    return orjson.dumps(value).decode()
