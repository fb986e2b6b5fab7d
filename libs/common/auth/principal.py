from dataclasses import dataclass
from enum import StrEnum

from libs.common.domain import DEFAULT_TENANT


class Scope(StrEnum):
    SUBMIT = "submit"
    """POST /process, cancel, retry (one or many)."""
    READ = "read"
    """Every GET of objects and progress, the SSE stream and stream tokens."""
    ADMIN = "admin"
    """Everything, and the API key endpoints."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `identity` keys its rate limit and stream cap: `key:<id>` for an API key (also
    when it comes through a stream token made with that key), `jwt:<sub>` for a JWT; None when auth is off."""

    tenant: str
    scopes: frozenset[Scope]
    identity: str | None = None
    key_id: str | None = None
    """The API key's id, when an API key (or a stream token made with one) authenticated the request."""

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


ANONYMOUS = Principal(tenant=DEFAULT_TENANT, scopes=frozenset({Scope.ADMIN}))
"""Every request when authentication is off (development on localhost only)."""
