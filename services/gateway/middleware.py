"""HTTP middleware of the gateway: request ids, security headers, a body size limit, load shedding. Pure ASGI
(no BaseHTTPMiddleware), so streamed responses such as SSE pass through unbuffered."""

import re
import uuid

import orjson
import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}


class RequestContextMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` when it is sane, else a new one), returns it, binds it
    to every log line of the request, and adds the security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                # Set by the rate limiter during the request (services/gateway/security.py), errors included.
                for name, value in scope.get("state", {}).get("rate_limit_headers", {}).items():
                    headers.setdefault(name, value)
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413 before they are read into memory (by Content-Length, or while
    a body without one streams in)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Stop reading: the app sees the body end here, and whatever it answers is replaced by a 413.
                    refused = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
        if refused:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        detail = f"the request body is over {self.max_bytes} bytes; put large data in S3 and pass `source`"
        await _problem(send, 413, "Request body too large", detail, scope.get("path", ""), [])


SHED_RETRY_AFTER = 1
"""Seconds a shed request is told to wait (Retry-After)."""


class LoadSheddingMiddleware:
    """Answers 503 + Retry-After at once when this instance already has `max_in_flight` requests in progress.

    Offered more than it can serve, a server that queues everything answers nothing in time: every request
    waits behind all the others (for the database pool, the event loop) until clients give up. Refusing the
    excess immediately keeps the accepted requests fast and tells the others when to come back. SSE streams
    (long-lived; capped per key elsewhere) and /health are not counted."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.endswith("/stream") or path == "/health":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await _problem(
                send,
                503,
                "Service unavailable",
                f"the gateway is at capacity; try again in {SHED_RETRY_AFTER} s",
                path,
                [(b"retry-after", str(SHED_RETRY_AFTER).encode())],
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _problem(
    send: Send, status: int, title: str, detail: str, instance: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = orjson.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance}
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
