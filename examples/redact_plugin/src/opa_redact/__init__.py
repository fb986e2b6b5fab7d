"""`redact`: replaces the values of the fields named in the options, and hands the redacted data to the
operations that follow (as transform does). A complete operation plugin in one module: see the README."""

from pydantic import Field, JsonValue

from libs.common.options import OperationOptions
from services.executor.data import CONTENT_TYPES, RecordEncoder
from services.executor.operations.base import OperationContext, OperationOutcome, OperationSpec
from services.executor.records import RecordStream


class RedactOptions(OperationOptions):  # validated at submission: a bad option is a 422
    fields: list[str] = Field(min_length=1)
    replacement: str = "[redacted]"


async def run(records: RecordStream, ctx: OperationContext[RedactOptions]) -> OperationOutcome:
    wanted, redacted = set(ctx.options.fields), 0
    encoder = RecordEncoder("ndjson")
    async with ctx.storage.upload(ctx.output_key("redact_output.ndjson"), CONTENT_TYPES["ndjson"]) as upload:
        async for batch in records.batches():  # one pass, in bounded memory
            out: list[JsonValue] = []
            for record in batch:
                if isinstance(record, dict) and wanted & record.keys():
                    redacted += 1
                    record = {k: ctx.options.replacement if k in wanted else v for k, v in record.items()}
                out.append(record)
            await upload.write(encoder.encode(out))
    # output_url: the operations after this one see the redacted data
    return OperationOutcome(result={"records_redacted": redacted}, output_url=upload.url, output_format="ndjson")


REDACT = OperationSpec(name="redact", options_model=RedactOptions, run=run)
