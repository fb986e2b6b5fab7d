"""Authentication, scopes and rate limits of the HTTP API, as FastAPI dependencies.

Each route declares the scope it needs (`Depends(require(Scope.READ))`); the dependency authenticates the
request, counts it against the caller's rate limit, checks the scope and returns the Principal, whose tenant
the route then works in. The security schemes below make `/docs` show an Authorize button.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from libs.common.auth import Authenticator, Principal, Scope
from libs.common.errors import ForbiddenError, RateLimitedError, UnauthorizedError
from libs.common.ratelimit import RateDecision, RateLimiter

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`opa_...`) or, when JWT_ISSUER is set, a JWT of that issuer. Scopes: `submit` "
    "(submit, cancel, retry), `read` (every read, streams and stream tokens), `admin` (everything, and API keys).",
)
# A security scheme rather than a plain query parameter, so that clients and tools (schemathesis) know that
# `?token=` is a credential.
stream_token_scheme = APIKeyQuery(
    name="token",
    auto_error=False,
    scheme_name="streamToken",
    description="A stream token from `POST /api/v1/objects/{id}/stream-token`, for clients that cannot send "
    "headers (a browser's EventSource); valid only for that object's stream.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="An API key, instead of a bearer token."
)

RATE_LIMIT_HEADERS = "rate_limit_headers"
"""Key in the request state of the RateLimit-* headers; the middleware adds them to the response, errors included."""


class RateLimits:
    def __init__(self, limiter: RateLimiter, per_key: int, anonymous: int) -> None:
        self.limiter = limiter
        self.per_key = per_key
        self.anonymous = anonymous

    async def count(self, request: Request, principal: Principal | None) -> None:
        """Counts the request: against its caller's limit, or its address' when it has no valid credentials (or
        authentication is off, with the per-key limit). Raises RateLimitedError past the limit."""
        address = request.client.host if request.client else "unknown"
        if principal is None:
            decision = await self.limiter.hit(f"addr:{address}:anonymous", self.anonymous)
        else:
            decision = await self.limiter.hit(principal.identity or f"addr:{address}", self.per_key)
        if decision is None:
            return
        request.state.rate_limit_headers = decision.headers()
        if not decision.allowed:
            raise RateLimitedError(_refusal(decision), decision.retry_after_seconds)


def _refusal(decision: RateDecision) -> str:
    return f"rate limit of {decision.limit} requests per minute exceeded; retry after {decision.retry_after_seconds} s"


def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def get_rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
ApiKeyHeader = Annotated[str | None, Depends(api_key_scheme)]


async def _authenticate(
    request: Request,
    scope: Scope,
    authenticate: Callable[[], Awaitable[Principal]],
) -> Principal:
    limits = get_rate_limits(request)
    try:
        principal = await authenticate()
    except UnauthorizedError:
        # Failed attempts count against the client address, so keys cannot be guessed at full speed.
        await limits.count(request, None)
        raise
    await limits.count(request, principal)
    if not principal.allows(scope):
        raise ForbiddenError(f"this credential lacks the `{scope}` scope")
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    # `bearer` is declared for the OpenAPI document (the Authorize button); the header is read whole, below.
    async def dependency(request: Request, bearer: Bearer, api_key: ApiKeyHeader) -> Principal:  # noqa: ARG001
        authenticator = get_authenticator(request)
        credential = authenticator.credential(request.headers.get("authorization"), api_key)
        return await _authenticate(request, scope, lambda: authenticator.authenticate(credential))

    return dependency


async def require_stream_reader(
    request: Request,
    id: UUID,
    bearer: Bearer,  # noqa: ARG001 - for the OpenAPI document
    api_key: ApiKeyHeader,
    token: Annotated[str | None, Depends(stream_token_scheme)],
) -> Principal:
    authenticator = get_authenticator(request)
    credential = authenticator.credential(request.headers.get("authorization"), api_key)
    return await _authenticate(request, Scope.READ, lambda: authenticator.authenticate_stream(credential, token, id))


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Submitter = Annotated[Principal, Depends(require(Scope.SUBMIT))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
StreamReader = Annotated[Principal, Depends(require_stream_reader)]
