"""The enrich operation: content metadata from the context, inferred field types, caller metadata."""

from datetime import datetime, timedelta

from pydantic import JsonValue

from libs.common.options import EnrichOptions
from services.executor.data import Dataset
from services.executor.operations.enrich import run
from tests.unit.executor._context import make_context


async def test_enrich_reports_size_checksum_and_format_from_the_context() -> None:
    ctx = make_context(EnrichOptions(), input_sha256="ab" * 32, input_bytes=1234, input_format="csv")
    outcome = await run(Dataset(records=[{"a": "1"}, {"a": "2"}]), ctx)
    assert outcome.output is None
    assert outcome.result["content"] == {
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "format": "csv",
        "encoding": "utf-8",
        "shape": "records",
        "record_count": 2,
        "field_count": 1,
    }


async def test_enrich_reports_document_shape_for_one_document() -> None:
    outcome = await run(Dataset.of({"a": 1, "b": [1]}), make_context(EnrichOptions()))
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
    outcome = await run(Dataset(records=records), make_context(EnrichOptions()))
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


async def test_enrich_copies_caller_metadata_and_stamps_the_time() -> None:
    metadata: dict[str, JsonValue] = {"source": "crm", "version": 3, "nested": {"a": [1, 2]}}
    before = datetime.now().astimezone()
    outcome = await run(Dataset(records=[]), make_context(EnrichOptions(metadata=metadata)))
    assert outcome.result["metadata"] == metadata
    stamped = outcome.result["enriched_at"]
    assert isinstance(stamped, str)
    enriched_at = datetime.fromisoformat(stamped)
    assert enriched_at.utcoffset() == timedelta(0)
    assert before <= enriched_at <= datetime.now().astimezone()


async def test_enrich_reports_no_fields_when_records_are_not_objects() -> None:
    outcome = await run(Dataset(records=[1, "a"]), make_context(EnrichOptions()))
    assert outcome.result["fields"] == {}
