from typing import TypeVar, cast

import orjson
from pydantic import JsonValue

from libs.common.options import OperationOptions
from services.executor.data import DataFormat
from services.executor.operations.base import OperationContext
from services.executor.records import BATCH_BYTES, RecordStream, chunks_of
from services.executor.storage import Storage

OptionsT = TypeVar("OptionsT", bound=OperationOptions)

MAX_DOCUMENT_BYTES = 1024 * 1024


def make_context(options: OptionsT, *, identifier: str = "object-1") -> OperationContext[OptionsT]:
    """A context for operations that never touch storage (transform and export are tested against S3)."""
    return OperationContext(identifier=identifier, options=options, storage=cast(Storage, None))


def stream_of(
    data: bytes,
    fmt: DataFormat = "json",
    *,
    chunk_size: int = BATCH_BYTES,
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> RecordStream:
    return RecordStream(chunks_of(data, chunk_size), fmt, max_document_bytes)


def records_of(records: list[JsonValue]) -> RecordStream:
    """Records as a JSON array, the way an inline payload reaches an operation."""
    return stream_of(orjson.dumps(records))


def document_of(value: JsonValue) -> RecordStream:
    """One JSON document that is not an array: a single record, with `is_document` set once read."""
    assert not isinstance(value, list)
    return stream_of(orjson.dumps(value))
