"""Expected failures. Anything else is a bug and stays a plain exception."""

from typing import ClassVar

RETRY_AFTER_SECONDS = "2"
"""What a 503 tells clients to wait before trying again."""
WWW_AUTHENTICATE = 'Bearer realm="object-processing-api"'
"""RFC 9110: a 401 names the scheme to authenticate with. X-API-Key is accepted too (see /docs)."""


class ServiceError(Exception):
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    http_status: ClassVar[int] = 500

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer to this error carries (every service's error handler adds them)."""
        return {}


class BadRequestError(ServiceError):
    code = "bad_request"
    title = "Bad request"
    http_status = 400


class NotFoundError(ServiceError):
    code = "not_found"
    title = "Not found"
    http_status = 404


class InvalidTransitionError(ServiceError):
    code = "invalid_transition"
    title = "Invalid state transition"
    http_status = 409


class UnavailableError(ServiceError):
    code = "unavailable"
    title = "Service unavailable"
    http_status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": RETRY_AFTER_SECONDS}


class UnauthorizedError(ServiceError):
    """No credentials, or credentials that are not valid (unknown, revoked, expired, badly signed): 401."""

    code = "unauthorized"
    title = "Unauthorized"
    http_status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": WWW_AUTHENTICATE}


class ForbiddenError(ServiceError):
    """Valid credentials without the scope the request needs: 403."""

    code = "forbidden"
    title = "Forbidden"
    http_status = 403


class RateLimitedError(ServiceError):
    code = "rate_limited"
    title = "Too many requests"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
