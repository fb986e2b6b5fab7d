"""Expected failures. Anything else is a bug and stays a plain exception."""

from typing import ClassVar


class ServiceError(Exception):
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    http_status: ClassVar[int] = 500


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
