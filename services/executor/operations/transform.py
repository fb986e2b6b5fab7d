"""transform: a declarative list of steps; its output is the data the object's following operations see."""

import re
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any, cast

import jmespath
from pydantic import JsonValue

from libs.common.options import (
    CastStep,
    DefaultStep,
    DropStep,
    FilterStep,
    NormalizeStep,
    RenameStep,
    SelectStep,
    TransformOptions,
    TransformStep,
)
from services.executor.data import CONTENT_TYPES, RecordEncoder, field_names
from services.executor.operations.base import OperationContext, OperationFailedError, OperationOutcome
from services.executor.records import RecordStream

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")


@lru_cache(maxsize=65536)  # keys repeat from record to record
def snake_case(name: str) -> str:
    return "_".join(part.lower() for part in _WORD_BOUNDARY.split(name.strip()) if part) or name


def _default_steps(record: JsonValue) -> JsonValue:
    if isinstance(record, dict):
        return {snake_case(k): _default_steps(v) for k, v in record.items()}
    if isinstance(record, list):
        return [_default_steps(v) for v in record]
    if isinstance(record, str):
        return record.strip()
    return record


def _cast(value: JsonValue, kind: str, field: str, index: int) -> JsonValue:
    if value is None:
        return None
    try:
        if kind == "int":
            return int(float(value)) if isinstance(value, str) and "." in value else int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        if kind == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("true", "1", "yes", "y"):
                    return True
                if lowered in ("false", "0", "no", "n", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int() of a number string beyond the float range
        msg = f"record {index}: cannot cast field '{field}' value {value!r} to {kind}"
        raise OperationFailedError(msg) from None


def _normalize(value: str, step: NormalizeStep) -> str:
    if step.strip:
        value = value.strip()
    if step.collapse_whitespace:
        value = " ".join(value.split())
    if step.case == "lower":
        value = value.lower()
    elif step.case == "upper":
        value = value.upper()
    return value


def _apply(step: TransformStep, records: list[JsonValue], offset: int) -> list[JsonValue]:
    """One step over one batch. Records are freshly parsed and owned by this run, so they are changed in place."""
    if isinstance(step, FilterStep):
        expression = _compiled(step.expression)
        return [r for r in records if _jmespath_truthy(expression.search(r))]
    for index, record in enumerate(records, start=offset):
        if not isinstance(record, dict):
            msg = f"record {index} is not an object; step '{step.op}' needs objects"
            raise OperationFailedError(msg)
    rows = cast(list[dict[str, Any]], records)
    match step:
        case SelectStep():
            return [{k: row.get(k) for k in step.fields} for row in rows]
        case RenameStep():
            mapping = step.mapping
            return [{mapping.get(k, k): v for k, v in row.items()} for row in rows]
        case DropStep():
            for row in rows:
                for k in step.fields:
                    row.pop(k, None)
        case CastStep():
            for index, row in enumerate(rows, start=offset):
                for k, kind in step.types.items():
                    if k in row:
                        row[k] = _cast(row[k], kind, k, index)
        case DefaultStep():
            for row in rows:
                for k, v in step.values.items():
                    if row.get(k) is None:
                        row[k] = v
        case NormalizeStep():
            for row in rows:
                for k in step.fields if step.fields is not None else list(row):
                    v = row.get(k)
                    if isinstance(v, str):
                        row[k] = _normalize(v, step)
    return records


def _jmespath_truthy(value: object) -> bool:
    # JMESPath's truth, not Python's: 0 is true; false, null and empty strings, arrays and objects are false.
    return not (value is None or value is False or (isinstance(value, str | list | dict) and not value))


@lru_cache(maxsize=256)
def _compiled(expression: str) -> jmespath.parser.ParsedResult:
    return jmespath.compile(expression)


MAX_REPORTED_FIELDS = 1000


async def run(records: RecordStream, ctx: OperationContext[TransformOptions]) -> OperationOutcome:
    steps = ctx.options.steps
    applied: list[JsonValue] = (
        ["default: trim strings, snake_case keys"]
        if steps is None
        else [step.model_dump(mode="json") for step in steps]
    )
    batches = records.batches()
    first = await anext(batches, None)  # after the first batch, the shape (records or one document) is known
    document = records.stats.is_document
    encoder = RecordEncoder("json" if document else "ndjson", document=document)
    fields: dict[str, None] = {}
    records_in = 0
    # Written as it is produced: NDJSON for records, JSON for a single document; never held whole.
    key = ctx.output_key(f"transform_output.{encoder.format}")
    async with ctx.storage.upload(key, CONTENT_TYPES[encoder.format]) as upload:
        if first is not None:
            async for batch in _chain(first, batches):
                offset = records_in
                records_in += len(batch)
                if steps is None:
                    out = [_default_steps(r) for r in batch]
                else:
                    out = batch
                    for step in steps:
                        out = _apply(step, out, offset)
                if len(fields) < MAX_REPORTED_FIELDS:
                    fields.update(dict.fromkeys(field_names(out)))
                await upload.write(encoder.encode(out))
        await upload.write(encoder.finish())
    return OperationOutcome(
        result={
            "steps": applied,
            "records_in": records_in,
            "records_out": encoder.records,
            "fields_out": [*list(fields)[:MAX_REPORTED_FIELDS]],
            "output": {"url": upload.url, "format": encoder.format, "size_bytes": upload.size, "sha256": upload.sha256},
        },
        output_url=upload.url,
        output_format=encoder.format,
    )


async def _chain(first: list[JsonValue], rest: AsyncIterator[list[JsonValue]]) -> AsyncIterator[list[JsonValue]]:
    yield first
    async for batch in rest:
        yield batch
