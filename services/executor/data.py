"""An object's data as the operations see it: a list of records, or one JSON document."""

import csv
import io
from dataclasses import dataclass
from typing import Literal, TypeAlias

import orjson
from pydantic import JsonValue

DataFormat: TypeAlias = Literal["json", "ndjson", "csv"]

CONTENT_TYPES: dict[DataFormat, str] = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
}


class DataError(ValueError):
    """The data cannot be read as the format it claims to be."""


@dataclass(frozen=True, slots=True)
class Dataset:
    records: list[JsonValue]
    is_document: bool = False
    """A single JSON document (an object or a scalar), held as one record."""

    @classmethod
    def of(cls, value: JsonValue) -> "Dataset":
        if isinstance(value, list):
            return cls(records=value)
        return cls(records=[value], is_document=True)

    def value(self) -> JsonValue:
        return self.records[0] if self.is_document else self.records

    def field_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            if isinstance(record, dict):
                seen.update(dict.fromkeys(record))
        return list(seen)


def detect_format(explicit: str | None, key: str, content_type: str | None = None) -> DataFormat:
    for fmt in CONTENT_TYPES:
        if explicit == fmt:
            return fmt
    lowered = key.lower()
    for suffix, fmt in ((".ndjson", "ndjson"), (".jsonl", "ndjson"), (".csv", "csv"), (".json", "json")):
        if lowered.endswith(suffix):
            return fmt
    if content_type:
        for fmt, known in CONTENT_TYPES.items():
            if content_type.split(";")[0].strip() == known:
                return fmt
    return "json"


def parse(raw: bytes, fmt: DataFormat) -> Dataset:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"data is not UTF-8 text (byte {exc.start})"
        raise DataError(msg) from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows: list[JsonValue] = []
        try:
            for row in reader:
                if None in row:  # DictReader puts surplus cells under the key None, which JSON cannot hold
                    msg = f"CSV line {reader.line_num} has more cells than the header"
                    raise DataError(msg)
                rows.append(row)
        except csv.Error as exc:
            msg = f"CSV line {reader.line_num} cannot be read: {exc}"
            raise DataError(msg) from None
        return Dataset(records=rows)
    if fmt == "ndjson":
        records: list[JsonValue] = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028, U+0085 and other characters splitlines() cuts at.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    msg = f"line {number} is not valid JSON: {exc}"
                    raise DataError(msg) from None
        return Dataset(records=records)
    try:
        return Dataset.of(orjson.loads(text))
    except orjson.JSONDecodeError as exc:
        msg = f"data is not valid JSON: {exc}"
        raise DataError(msg) from None


def serialize(dataset: Dataset, fmt: DataFormat) -> bytes:
    if fmt == "json":
        return orjson.dumps(dataset.value())
    if fmt == "ndjson":
        return b"".join(orjson.dumps(record) + b"\n" for record in dataset.records)
    buffer = io.StringIO(newline="")
    fields = dataset.field_names()
    if "value" not in fields and any(not isinstance(record, dict) for record in dataset.records):
        fields.append("value")  # the column non-object records are written to, below
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for record in dataset.records:
        row = record if isinstance(record, dict) else {"value": record}
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buffer.getvalue().encode()


def _csv_cell(value: JsonValue) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value
    return orjson.dumps(value).decode()
