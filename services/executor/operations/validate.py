"""validate: structural checks, required fields and an optional JSON Schema; invalid data fails the object."""

from itertools import islice

from jsonschema import Draft202012Validator
from pydantic import JsonValue

from libs.common.options import ValidateOptions
from services.executor.operations.base import OperationContext, OperationFailedError, OperationOutcome
from services.executor.records import RecordStream

MAX_REPORTED_ERRORS = 100


def _path(base: str, parts: object) -> str:
    return base + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)  # type: ignore[attr-defined]


async def run(records: RecordStream, ctx: OperationContext[ValidateOptions]) -> OperationOutcome:
    options = ctx.options
    validator = Draft202012Validator(options.json_schema) if options.json_schema is not None else None
    errors: list[dict[str, JsonValue]] = []
    total_errors = 0
    invalid_records = 0
    index = 0
    async for batch in records.batches():
        for record in batch:
            base = f"$[{index}]"
            index += 1
            record_errors: list[dict[str, JsonValue]] = []
            if options.required:
                if not isinstance(record, dict):
                    record_errors.append(
                        {"path": base, "message": "is not an object, so it has none of the required fields"}
                    )
                else:
                    record_errors.extend(
                        {"path": f"{base}.{name}", "message": "required field is missing or null"}
                        for name in options.required
                        if record.get(name) is None
                    )
            if validator is not None:
                record_errors.extend(
                    {"path": _path(base, error.absolute_path), "message": error.message}
                    for error in islice(validator.iter_errors(record), MAX_REPORTED_ERRORS)
                )
            if record_errors:
                invalid_records += 1
                total_errors += len(record_errors)
                errors.extend(record_errors[: MAX_REPORTED_ERRORS - len(errors)])
    count = records.stats.record_count
    if records.stats.is_document:
        for error in errors:
            error["path"] = "$" + str(error["path"]).removeprefix("$[0]")
    if options.min_records is not None and count < options.min_records:
        total_errors += 1
        errors.insert(0, {"path": "$", "message": f"{count} records; at least {options.min_records} required"})
    if options.max_records is not None and count > options.max_records:
        total_errors += 1
        errors.insert(0, {"path": "$", "message": f"{count} records; at most {options.max_records} allowed"})
    report: dict[str, JsonValue] = {
        "valid": not errors,
        "record_count": count,
        "shape": "document" if records.stats.is_document else "records",
        "invalid_records": invalid_records,
        "checks": {
            "parseable": True,
            "encoding": "utf-8",
            "format": records.format,
            "required_fields": list(options.required),
            "json_schema": options.json_schema is not None,
            "min_records": options.min_records,
            "max_records": options.max_records,
        },
        "error_count": total_errors,
        "errors": [*errors[:MAX_REPORTED_ERRORS]],
        "errors_truncated": total_errors > MAX_REPORTED_ERRORS,
    }
    if errors:
        first = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:3])
        more = f" (and {total_errors - 3} more)" if total_errors > 3 else ""
        raise OperationFailedError(f"validation failed: {first}{more}", report)
    return OperationOutcome(result=report)
