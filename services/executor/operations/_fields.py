"""Field type inference shared by enrich and analyze."""

from pydantic import JsonValue


def json_type(value: JsonValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def field_values(records: list[JsonValue], name: str) -> list[JsonValue]:
    return [record.get(name) for record in records if isinstance(record, dict)]
