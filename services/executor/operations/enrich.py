"""enrich: content metadata (size, checksum, records, field types, format) plus caller-supplied metadata."""

from collections import Counter
from datetime import UTC, datetime

from pydantic import JsonValue

from libs.common.options import EnrichOptions
from services.executor.data import Dataset
from services.executor.operations._fields import field_values, json_type
from services.executor.operations.base import OperationContext, OperationOutcome


async def run(data: Dataset, ctx: OperationContext[EnrichOptions]) -> OperationOutcome:
    field_types: dict[str, JsonValue] = {}
    for name in data.field_names():
        kinds = Counter(json_type(v) for v in field_values(data.records, name))
        non_null = [k for k in kinds if k != "null"]
        field_types[name] = {
            "type": non_null[0] if len(non_null) == 1 else ("mixed" if non_null else "null"),
            "types": dict(kinds),
            "nullable": "null" in kinds or sum(kinds.values()) < len(data.records),
        }
    return OperationOutcome(
        result={
            "content": {
                "size_bytes": ctx.input_bytes,
                "sha256": ctx.input_sha256,
                "format": ctx.input_format,
                "encoding": "utf-8",
                "shape": "document" if data.is_document else "records",
                "record_count": len(data.records),
                "field_count": len(field_types),
            },
            "fields": field_types,
            "metadata": ctx.options.metadata,
            "enriched_at": datetime.now(UTC).isoformat(),
        }
    )
