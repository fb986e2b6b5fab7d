"""The vocabulary of the product: object states and operation names."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field


class ObjectState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        # failed is not final (retry re-queues it), but nothing more happens to it on its own.
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({ObjectState.COMPLETED, ObjectState.FAILED, ObjectState.CANCELLED})


class Operation(StrEnum):
    VALIDATE = "validate"
    TRANSFORM = "transform"
    ENRICH = "enrich"
    ANALYZE = "analyze"
    EXPORT = "export"


OperationName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
"""An operation's name on the wire: a built-in `Operation`, or a plugin's name (see libs/common/registry.py)."""


IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
"""Identifiers become S3 key prefixes: letters, digits, '-', '_' and '.', 1-255 chars; no '/' (and no '..', checked
by `check_identifier`, since the pattern engine has no look-ahead)."""


def check_identifier(value: str) -> str:
    if ".." in value:
        msg = "must not contain '..'"
        raise ValueError(msg)
    return value


def artifact_key(identifier: str, operation: str) -> str:
    return f"{identifier}/{operation}_result.json"


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
