"""Per-operation options, validated by the gateway at submission and by executors again before use.

A request carries them as `"options": {"<operation>": {...}}`. Unknown keys are refused, so a typo is a 422
at submission rather than an option silently ignored.
"""

from typing import Annotated, Literal, TypeAlias

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from libs.common.domain import Operation

FieldName: TypeAlias = Annotated[str, Field(min_length=1, max_length=256)]


class OperationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidateOptions(OperationOptions):
    json_schema: dict[str, JsonValue] | None = Field(default=None, alias="schema")
    """A JSON Schema (Draft 2020-12) every record must satisfy."""
    required: list[FieldName] = Field(default_factory=list, max_length=256)
    """Fields every record must have (non-null)."""
    min_records: int | None = Field(default=None, ge=0)
    max_records: int | None = Field(default=None, ge=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if value is not None:
            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                msg = f"not a valid JSON Schema (Draft 2020-12): {exc.message}"
                raise ValueError(msg) from None
        return value


class SelectStep(OperationOptions):
    op: Literal["select"]
    fields: list[FieldName] = Field(min_length=1)


class DropStep(OperationOptions):
    op: Literal["drop"]
    fields: list[FieldName] = Field(min_length=1)


class RenameStep(OperationOptions):
    op: Literal["rename"]
    mapping: dict[FieldName, FieldName] = Field(min_length=1)


class CastStep(OperationOptions):
    op: Literal["cast"]
    types: dict[FieldName, Literal["int", "float", "str", "bool"]] = Field(min_length=1)


class DefaultStep(OperationOptions):
    op: Literal["default"]
    values: dict[FieldName, JsonValue] = Field(min_length=1)


class NormalizeStep(OperationOptions):
    op: Literal["normalize"]
    fields: list[FieldName] | None = None
    """String fields to normalise; all string fields when omitted."""
    strip: bool = True
    case: Literal["lower", "upper"] | None = None
    collapse_whitespace: bool = False


class FilterStep(OperationOptions):
    op: Literal["filter"]
    expression: str = Field(min_length=1, max_length=1024)
    """A JMESPath expression evaluated on each record; records for which it is truthy are kept."""

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            jmespath.compile(value)
        except JMESPathError as exc:
            msg = f"not a valid JMESPath expression: {exc}"
            raise ValueError(msg) from None
        return value


TransformStep = Annotated[
    SelectStep | DropStep | RenameStep | CastStep | DefaultStep | NormalizeStep | FilterStep,
    Field(discriminator="op"),
]


class TransformOptions(OperationOptions):
    steps: list[TransformStep] | None = Field(default=None, max_length=100)
    """Applied in order. Without steps: trim whitespace around every string value and snake_case every key."""


class EnrichOptions(OperationOptions):
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    """Static metadata copied into the result as given."""


class AnalyzeOptions(OperationOptions):
    fields: list[FieldName] | None = None
    """Fields to analyse; every field seen when omitted."""
    top: int = Field(default=5, ge=1, le=100)


class ExportOptions(OperationOptions):
    format: Literal["json", "ndjson", "csv"] = "json"


OPTIONS_MODELS: dict[Operation, type[OperationOptions]] = {
    Operation.VALIDATE: ValidateOptions,
    Operation.TRANSFORM: TransformOptions,
    Operation.ENRICH: EnrichOptions,
    Operation.ANALYZE: AnalyzeOptions,
    Operation.EXPORT: ExportOptions,
}
