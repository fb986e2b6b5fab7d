"""Field type inference shared by enrich and analyze."""

from typing import Any

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


TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}
"""JSON type names by the Python type a parsed JSON value has."""


def columns(batch: list[JsonValue], wanted: set[str] | None = None) -> dict[str, list[JsonValue]]:
    """The batch's object records as one list of values per field (records lacking a field add nothing)."""
    rows = [record for record in batch if isinstance(record, dict)]
    keys: set[str] = set().union(*rows)  # the keys of every record, at C speed
    if wanted is not None:
        keys &= wanted
    names = sorted(keys)  # a stable order, so the same input always gives the same artifact
    result: dict[str, list[JsonValue]] = {}
    for name in names:
        values = [row.get(name, _MISSING) for row in rows]  # one comprehension per field beats a loop per record
        if _MISSING in values:
            values = [value for value in values if value is not _MISSING]
        result[name] = values
    return result


_MISSING: Any = object()
