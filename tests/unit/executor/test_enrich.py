"""The enrich operation: content metadata from the bytes read, inferred field types, caller metadata."""

import hashlib
from datetime import datetime, timedelta

from pydantic import JsonValue

from libs.common.options import EnrichOptions
from services.executor.operations.enrich import run
from tests.unit.executor._context import document_of, make_context, records_of, stream_of


async def test_enrich_reports_size_checksum_and_format_of_the_bytes_read() -> None:
    raw = b"\xef\xbb\xbfa\r\n1\r\n2\r\n"
    outcome = await run(stream_of(raw, "csv", chunk_size=3), make_context(EnrichOptions()))
    assert outcome.output_url is None
    assert outcome.result["content"] == {
        "size_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "format": "csv",
        "encoding": "utf-8",
        "shape": "records",
        "record_count": 2,
        "field_count": 1,
    }


async def test_enrich_reports_document_shape_for_one_document() -> None:
    outcome = await run(document_of({"a": 1, "b": [1]}), make_context(EnrichOptions()))
    content = outcome.result["content"]
    assert isinstance(content, dict)
    assert content["shape"] == "document"
    assert content["record_count"] == 1
    assert content["field_count"] == 2


async def test_enrich_infers_one_type_per_field_and_marks_mixed_and_nullable() -> None:
    records: list[JsonValue] = [
        {"id": 1, "name": "Ann", "score": 1.5, "flag": True, "tags": [], "meta": {}, "mixed": 1, "gone": None},
        {"id": 2, "name": None, "score": 2.0, "flag": False, "tags": ["x"], "meta": {"k": 1}, "mixed": "one"},
    ]
    outcome = await run(records_of(records), make_context(EnrichOptions()))
    fields = outcome.result["fields"]
    assert isinstance(fields, dict)
    assert fields["id"] == {"type": "integer", "types": {"integer": 2}, "nullable": False}
    assert fields["name"] == {"type": "string", "types": {"string": 1, "null": 1}, "nullable": True}
    assert fields["score"] == {"type": "number", "types": {"number": 2}, "nullable": False}
    assert fields["flag"] == {"type": "boolean", "types": {"boolean": 2}, "nullable": False}
    assert fields["tags"] == {"type": "array", "types": {"array": 2}, "nullable": False}
    assert fields["meta"] == {"type": "object", "types": {"object": 2}, "nullable": False}
    assert fields["mixed"] == {"type": "mixed", "types": {"integer": 1, "string": 1}, "nullable": False}
    # Missing from the second record counts as null.
    assert fields["gone"] == {"type": "null", "types": {"null": 2}, "nullable": True}


async def test_enrich_counts_missing_fields_as_null_across_batches() -> None:
    raw = b'{"a": 1, "b": 2}\n{"a": 3}\n'
    outcome = await run(stream_of(raw, "ndjson", chunk_size=4), make_context(EnrichOptions()))
    fields = outcome.result["fields"]
    assert isinstance(fields, dict)
    assert fields["b"] == {"type": "integer", "types": {"integer": 1, "null": 1}, "nullable": True}
    assert fields["a"] == {"type": "integer", "types": {"integer": 2}, "nullable": False}


async def test_enrich_copies_caller_metadata_and_stamps_the_time() -> None:
    metadata: dict[str, JsonValue] = {"source": "crm", "version": 3, "nested": {"a": [1, 2]}}
    before = datetime.now().astimezone()
    outcome = await run(records_of([]), make_context(EnrichOptions(metadata=metadata)))
    assert outcome.result["metadata"] == metadata
    stamped = outcome.result["enriched_at"]
    assert isinstance(stamped, str)
    enriched_at = datetime.fromisoformat(stamped)
    assert enriched_at.utcoffset() == timedelta(0)
    assert before <= enriched_at <= datetime.now().astimezone()


async def test_enrich_reports_no_fields_when_records_are_not_objects() -> None:
    outcome = await run(records_of([1, "a"]), make_context(EnrichOptions()))
    assert outcome.result["fields"] == {}
