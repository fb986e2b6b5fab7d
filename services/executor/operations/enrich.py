"""enrich: content metadata (size, checksum, records, field types, format) plus caller-supplied metadata."""

from collections import Counter
from datetime import UTC, datetime

from pydantic import JsonValue

from libs.common.options import EnrichOptions
from services.executor.operations._fields import TYPE_NAMES, columns
from services.executor.operations.base import OperationContext, OperationOutcome
from services.executor.records import RecordStream


async def run(records: RecordStream, ctx: OperationContext[EnrichOptions]) -> OperationOutcome:
    kinds: dict[str, Counter[str]] = {}
    objects = 0
    async for batch in records.batches():
        objects += sum(isinstance(record, dict) for record in batch)
        for name, values in columns(batch).items():
            counter = kinds.get(name)
            if counter is None:
                counter = kinds[name] = Counter()
            counter.update({TYPE_NAMES[kind]: n for kind, n in Counter(map(type, values)).items()})
    total = records.stats.record_count
    fields: dict[str, JsonValue] = {}
    for name, counter in kinds.items():
        missing = objects - sum(counter.values())
        if missing:  # an object record without the field counts as a null, as it did before streaming
            counter["null"] += missing
        non_null = [kind for kind in counter if kind != "null"]
        fields[name] = {
            "type": non_null[0] if len(non_null) == 1 else ("mixed" if non_null else "null"),
            "types": dict(counter),
            "nullable": "null" in counter or sum(counter.values()) < total,
        }
    return OperationOutcome(
        result={
            "content": {
                "size_bytes": records.stats.size_bytes,
                "sha256": records.stats.sha256,
                "format": records.format,
                "encoding": "utf-8",
                "shape": "document" if records.stats.is_document else "records",
                "record_count": total,
                "field_count": len(fields),
            },
            "fields": fields,
            "metadata": ctx.options.metadata,
            "enriched_at": datetime.now(UTC).isoformat(),
        }
    )
