"""export: writes the object's current data in the requested format next to its results."""

import hashlib

from libs.common.options import ExportOptions
from services.executor.data import CONTENT_TYPES, Dataset, serialize
from services.executor.operations.base import OperationContext, OperationOutcome


async def run(data: Dataset, ctx: OperationContext[ExportOptions]) -> OperationOutcome:
    fmt = ctx.options.format
    body = serialize(data, fmt)
    key = f"{ctx.identifier}/export.{fmt}"
    url = await ctx.storage.put(key, body, CONTENT_TYPES[fmt])
    return OperationOutcome(
        result={
            "format": fmt,
            "url": url,
            "size_bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "record_count": len(data.records),
            "presigned_url": await ctx.storage.presign(key),
            "presigned_url_expires_in": ctx.storage.presign_expiry,
        }
    )
