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
    columns: dict[str, list[JsonValue]] = {}
    for record in batch:
        if isinstance(record, dict):
            for name, value in record.items():
                if wanted is not None and name not in wanted:
                    continue
                column = columns.get(name)
                if column is None:
                    columns[name] = [value]
                else:
                    column.append(value)
    return columns
