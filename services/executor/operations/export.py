"""export: writes the object's current data in the requested format next to its results."""

from libs.common.options import ExportOptions
from services.executor.data import CONTENT_TYPES, RecordEncoder
from services.executor.operations.base import OperationContext, OperationOutcome
from services.executor.records import RecordStream


async def run(records: RecordStream, ctx: OperationContext[ExportOptions]) -> OperationOutcome:
    fmt = ctx.options.format
    key = ctx.output_key(f"export.{fmt}")
    batches = records.batches()
    first = await anext(batches, None)  # after the first batch, the shape (records or one document) is known
    encoder = RecordEncoder(fmt, document=records.stats.is_document)
    async with ctx.storage.upload(key, CONTENT_TYPES[fmt]) as upload:
        if first is not None:
            await upload.write(encoder.encode(first))
            async for batch in batches:
                await upload.write(encoder.encode(batch))
        await upload.write(encoder.finish())
    return OperationOutcome(
        result={
            "format": fmt,
            "url": upload.url,
            "size_bytes": upload.size,
            "sha256": upload.sha256,
            "record_count": encoder.records,
            "dropped_fields": [*sorted(encoder.dropped_fields)],
            "presigned_url": await ctx.storage.presign(key),
            "presigned_url_expires_in": ctx.storage.presign_expiry,
        }
    )
