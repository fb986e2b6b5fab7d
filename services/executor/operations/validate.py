"""validate: structural checks, required fields and an optional JSON Schema; invalid data fails the object."""

from itertools import islice

from jsonschema import Draft202012Validator
from pydantic import JsonValue

from libs.common.options import ValidateOptions
from services.executor.data import Dataset
from services.executor.operations.base import OperationContext, OperationFailedError, OperationOutcome

MAX_REPORTED_ERRORS = 100


async def run(data: Dataset, ctx: OperationContext[ValidateOptions]) -> OperationOutcome:
    options = ctx.options
    errors: list[dict[str, JsonValue]] = []
    count = len(data.records)
    if options.min_records is not None and count < options.min_records:
        errors.append({"path": "$", "message": f"{count} records; at least {options.min_records} required"})
    if options.max_records is not None and count > options.max_records:
        errors.append({"path": "$", "message": f"{count} records; at most {options.max_records} allowed"})
    validator = Draft202012Validator(options.json_schema) if options.json_schema is not None else None
    invalid_records = 0
    for index, record in enumerate(data.records):
        path = "$" if data.is_document else f"$[{index}]"
        record_errors: list[dict[str, JsonValue]] = []
        if options.required:
            if not isinstance(record, dict):
                record_errors.append(
                    {"path": path, "message": "is not an object, so it has none of the required fields"}
                )
            else:
                record_errors.extend(
                    {"path": f"{path}.{name}", "message": "required field is missing or null"}
                    for name in options.required
                    if record.get(name) is None
                )
        if validator is not None:
            record_errors.extend(
                {
                    "path": path + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path),
                    "message": error.message,
                }
                for error in islice(validator.iter_errors(record), MAX_REPORTED_ERRORS)
            )
        if record_errors:
            invalid_records += 1
            errors.extend(record_errors[: max(0, MAX_REPORTED_ERRORS - len(errors))])
    report: dict[str, JsonValue] = {
        "valid": not errors,
        "record_count": count,
        "shape": "document" if data.is_document else "records",
        "invalid_records": invalid_records,
        "checks": {
            "parseable": True,
            "encoding": "utf-8",
            "required_fields": list(options.required),
            "json_schema": options.json_schema is not None,
            "min_records": options.min_records,
            "max_records": options.max_records,
        },
        "errors": [*errors],
        "errors_truncated": len(errors) >= MAX_REPORTED_ERRORS,
    }
    if errors:
        first = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        msg = f"validation failed: {first}{more}"
        raise OperationFailedError(msg, report)
    return OperationOutcome(result=report)
