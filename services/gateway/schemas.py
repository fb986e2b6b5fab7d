"""Request and response bodies of the HTTP API."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from libs.common.auth import Scope
from libs.common.domain import (
    IDENTIFIER_PATTERN,
    TENANT_PATTERN,
    UNSTORABLE_CHARACTERS,
    ObjectState,
    OperationName,
    check_identifier,
    check_tenant,
)
from libs.common.progress import OperationStatus
from libs.common.registry import operation_options
from libs.common.s3 import parse_s3_url


def _holds_unstorable(value: Any) -> bool:
    """Whether any string of this JSON value, keys included, holds one of UNSTORABLE_CHARACTERS."""
    if isinstance(value, str):
        return UNSTORABLE_CHARACTERS.search(value) is not None
    if isinstance(value, dict):
        return any(UNSTORABLE_CHARACTERS.search(key) or _holds_unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_unstorable(item) for item in value)
    return False


def refuse_unstorable(value: Any) -> Any:
    """Refused here, with a clear message: a string that could not be stored failed later, where the submission was
    answered 503 (the reply timed out, or the command could not be encoded), every time it was repeated."""
    try:  # a whole payload is walked only when its JSON has the escape at all (orjson: ~3 us for 1 KB)
        suspect = b"\\u0000" in orjson.dumps(value)
    except orjson.JSONEncodeError:  # a lone surrogate, or an integer beyond 64 bits: walk it
        suspect = True
    if suspect and _holds_unstorable(value):
        msg = "a string holds the NUL character (\\u0000) or an unpaired surrogate (\\ud800-\\udfff); remove it"
        raise ValueError(msg)
    return value


Identifier = Annotated[
    str,
    # The Field before the validator: constraints placed after a validator are left out of the JSON Schema.
    Field(
        min_length=1,
        max_length=255,
        json_schema_extra={"pattern": IDENTIFIER_PATTERN},  # documented here, enforced with clear messages below
        description="1-255 characters: letters, digits, '-', '_' and single dots, starting with a letter or digit. "
        "No '..'. It becomes the S3 prefix of the object's artifacts.",
        examples=["object-123"],
    ),
    AfterValidator(check_identifier),
]


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identifier: Identifier
    operations: list[OperationName] = Field(
        min_length=1,
        max_length=32,
        description="Run in this order; each at most once. Built in: validate, transform, enrich, analyze, export "
        "(plus any operation an installed plugin registers).",
        examples=[["validate", "transform", "analyze"]],
    )
    payload: JsonValue = Field(
        default=None, description="The object's data inline: a JSON document or an array of records."
    )
    source: str | None = Field(
        default=None,
        max_length=2048,
        description="The object's data in S3: an s3://bucket/key URL of JSON, NDJSON or CSV.",
    )
    format: Literal["json", "ndjson", "csv"] | None = Field(
        default=None, description="Format of `source`; from its extension or content type when omitted."
    )
    options: dict[str, dict[str, JsonValue]] = Field(
        default_factory=dict, description="Per-operation options, keyed by operation name."
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="Caller's metadata, kept with the object.")

    @field_validator("operations")
    @classmethod
    def _known_and_unique(cls, value: list[str]) -> list[str]:
        available = operation_options()
        unknown = [op for op in value if op not in available]
        if unknown:
            msg = f"unknown operation {', '.join(repr(op) for op in unknown)}; available: {', '.join(available)}"
            raise ValueError(msg)
        duplicates = sorted({op for op in value if value.count(op) > 1})
        if duplicates:
            msg = f"each operation may appear once; repeated: {', '.join(duplicates)}"
            raise ValueError(msg)
        return value

    @field_validator("payload", "source", "options", "metadata")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return refuse_unstorable(value)

    @field_validator("source")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_s3_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ProcessRequest":
        if self.payload is not None and self.source is not None:
            msg = "give the data as `payload` or as `source`, not both"
            raise ValueError(msg)
        if self.format is not None and self.source is None:
            msg = "`format` describes `source`; it has no meaning without one"
            raise ValueError(msg)
        models = operation_options()
        for op, options in self.options.items():
            if op not in self.operations:
                msg = f"options given for '{op}', which is not in `operations`"
                raise ValueError(msg)
            try:
                models[op].model_validate(options)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                msg = f"invalid options for '{op}'{f' at {where}' if where else ''}: {first['msg']}"
                raise ValueError(msg) from None
        return self


class ProcessResponse(BaseModel):
    id: UUID
    identifier: str
    state: ObjectState
    task_id: UUID
    message: str


class CommandResponse(BaseModel):
    id: UUID
    identifier: str
    state: ObjectState
    message: str


class StatusResponse(BaseModel):
    queue_size: int = Field(description="Objects in state `queued`.")
    active_workers: int = Field(description="Objects in state `processing`: the slots in use, across all instances.")
    max_workers: int = Field(description="The cap on objects in `processing` (MAX_PARALLEL_WORKERS).")


class ObjectResponse(BaseModel):
    id: UUID
    identifier: str
    state: ObjectState
    operations: list[str]
    current_operation: str | None
    operations_status: dict[str, OperationStatus]
    s3_artifacts: dict[str, str]
    error_message: str | None
    task_id: UUID
    attempt: int
    cancel_requested: bool
    source: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ObjectPage(BaseModel):
    items: list[ObjectResponse]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class BulkRetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[UUID] | None = Field(default=None, max_length=500, description="Retry these objects.")
    # Strict: `0` or `"yes"` is not a boolean, and `"100"` is not a number, in a JSON body.
    all_failed: StrictBool = Field(
        default=False, description="Retry every failed object (up to `limit`), oldest first."
    )
    limit: StrictInt = Field(default=100, ge=1, le=500)

    @model_validator(mode="after")
    def _one_selector(self) -> "BulkRetryRequest":
        if (self.ids is None) == (not self.all_failed):
            msg = "give either `ids` or `all_failed: true`"
            raise ValueError(msg)
        return self


class BulkRetryResponse(BaseModel):
    retried: list[UUID]
    refused: list[dict[str, str]] = Field(description="Objects not retried, with the reason (not failed, not found).")


Tenant = Annotated[
    str,
    AfterValidator(check_tenant),
    Field(
        max_length=63,
        json_schema_extra={"pattern": TENANT_PATTERN},  # documented; check_tenant enforces it with a clearer message
        description="Lower-case letters, digits and '-', 1-63 characters. `default` is the tenant of every object "
        "when authentication is off; its artifacts keep the `{identifier}/` layout, every other tenant's are under "
        "`tenants/{tenant}/`.",
        examples=["acme"],
    ),
]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Tenant | None = Field(default=None, description="The key's tenant; the caller's own when omitted.")
    scopes: list[Scope] = Field(min_length=1, max_length=3, examples=[["submit", "read"]])
    name: Annotated[str | None, AfterValidator(refuse_unstorable)] = Field(
        default=None, max_length=200, description="What the key is for."
    )


class ApiKeyResponse(BaseModel):
    id: UUID
    prefix: str = Field(description="The public start of the key (`opa_<prefix>_...`): how to recognise it.")
    tenant: str
    scopes: list[str]
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="When a request last authenticated with it (to the minute).")


class ApiKeyCreated(ApiKeyResponse):
    key: str = Field(description="The key itself. Shown this once: only its hash is stored.")


class StreamTokenResponse(BaseModel):
    token: str
    expires_at: datetime
    stream_url: str = Field(description="The object's SSE stream, with the token: give it to `EventSource` as is.")
