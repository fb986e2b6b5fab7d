"""Every error leaves the HTTP services (the gateway, and the progress service, which nginx may expose directly) as
RFC 9457 problem details; no stack trace ever reaches a client."""

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from libs.common.errors import RETRY_AFTER_SECONDS, ServiceError

log = structlog.get_logger()

PROBLEM_JSON = "application/problem+json"
# PoolTimeoutError: no database connection free within the pool timeout (overload), the same answer.
DEPENDENCY_ERRORS = (OSError, TimeoutError, DBAPIError, PoolTimeoutError, RedisConnectionError, RedisTimeoutError)
"""Errors that mean PostgreSQL or Redis is unreachable or failing, not that the request is wrong."""


class Problem(BaseModel):
    """RFC 9457 problem details: every error answer has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem(status: int, title: str, detail: str, request: Request, **extra: object) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, instance=request.url.path, **extra)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path", "query")] or ["body"]
    return ".".join(parts)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    errors = [
        {"loc": _location(tuple(e["loc"])), "msg": e["msg"].removeprefix("Value error, "), "type": e["type"]}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(400, "Malformed JSON", "the request body is not valid JSON", request)
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
    return problem(422, "Invalid request", detail, request, errors=errors)


async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ServiceError):
        raise exc
    response = problem(exc.http_status, exc.title, str(exc), request)
    response.headers.update(exc.headers())
    return response


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    detail = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    if exc.status_code == 405:
        # Starlette lists the methods of the first route whose path matched; a path served by several routes
        # (GET and POST /api/v1/keys) supports all of theirs.
        allowed = sorted(
            {
                method
                for route in request.app.router.routes
                if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(request.url.path)
                for method in route.methods
            }
        )
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; use {', '.join(allowed)}"
    response = problem(exc.status_code, _title(exc.status_code), detail, request)
    response.headers.update(headers)
    return response


async def on_dependency_error(request: Request, exc: Exception) -> JSONResponse:
    # A dependency outage shows up as a connection error deep in a driver: tell the client to come back. Handled
    # here rather than by the catch-all, which Starlette re-raises: an outage is logged once per request, not
    # as a traceback.
    log.warning("request.dependency_unavailable", path=request.url.path, error_type=type(exc).__name__)
    response = problem(503, "Service unavailable", "a backing service is unreachable; try again shortly", request)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DEPENDENCY_ERRORS):  # raised from a middleware, outside the handlers above
        return await on_dependency_error(request, exc)
    log.error("request.failed", path=request.url.path, error_type=type(exc).__name__)
    return problem(500, "Internal error", "the server failed to handle this request; it has been logged", request)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for error in DEPENDENCY_ERRORS:
        app.add_exception_handler(error, on_dependency_error)
    app.add_exception_handler(Exception, on_unexpected_error)
