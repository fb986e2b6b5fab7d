"""The vocabulary of the product: object states and operation names."""

import re
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


UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
"""What no stored string may hold: NUL, which PostgreSQL keeps in no text or jsonb, and lone UTF-16 surrogates
(JSON's `\\ud800` unpaired, which Python's JSON parser takes), which are no UTF-8 at all."""

IDENTIFIER_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
"""Identifiers become S3 key prefixes: letters, digits, '-', '_' and single dots, starting with a letter or digit
(so no '/', no '..'); 1-255 characters (a length limit beside the pattern). Written without look-ahead, so that
every JSON Schema engine and test generator reads it the same way."""


def check_identifier(value: str) -> str:
    if ".." in value:
        msg = "must not contain '..'"
        raise ValueError(msg)
    if not re.fullmatch(IDENTIFIER_PATTERN, value):
        msg = "must start with a letter or digit and contain only letters, digits, '-', '_' and single dots"
        raise ValueError(msg)
    return value


DEFAULT_TENANT = "default"
"""The tenant of every object when authentication is off, and of objects submitted before tenants existed."""

TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""Tenant names become S3 key prefixes (`tenants/{tenant}/`): lower-case letters, digits and '-', 1-63 chars."""

TENANTS_PREFIX = "tenants"
"""The S3 prefix under which every tenant but the default one keeps its artifacts; not an identifier of the
default tenant, so that no default object's prefix can contain another tenant's."""


def check_tenant(value: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, value):
        msg = "a tenant is 1-63 characters: lower-case letters, digits and '-', starting with a letter or digit"
        raise ValueError(msg)
    return value


def object_prefix(identifier: str, tenant: str = DEFAULT_TENANT) -> str:
    """The S3 prefix of an object's artifacts and outputs. The default tenant keeps the original layout
    (`{identifier}/`); every other tenant has its own prefix, so no two tenants ever share one."""
    if tenant == DEFAULT_TENANT:
        return identifier
    return f"{TENANTS_PREFIX}/{tenant}/{identifier}"


def artifact_key(identifier: str, operation: str, tenant: str = DEFAULT_TENANT) -> str:
    return f"{object_prefix(identifier, tenant)}/{operation}_result.json"


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
