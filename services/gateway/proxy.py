"""Serves the progress service's SSE stream at the gateway's address, so the whole API lives on one URL.

The bytes pass through unchanged and unbuffered; `Last-Event-ID` goes upstream so resume works end to end.
"""

from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from libs.common.errors import BadRequestError, UnavailableError

# The credentials go upstream too: the progress service authenticates on its own (it is also reachable directly).
FORWARDED_REQUEST_HEADERS = ("last-event-id", "accept", "authorization", "x-api-key")
FORWARDED_RESPONSE_HEADERS = (
    "content-type",
    "cache-control",
    "x-accel-buffering",
    "retry-after",
    "www-authenticate",
)


class StreamProxy:
    def __init__(self, base_url: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(connect=5.0, read=None, write=5.0, pool=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(self, request: Request, path: str) -> Response:
        # Raw bytes: a header that is not ASCII passes through as it came instead of failing to encode here.
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() in FORWARDED_REQUEST_HEADERS]
        upstream_request = self.client.build_request("GET", path, headers=headers, params=request.query_params)
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.LocalProtocolError as exc:  # a header value HTTP/1.1 cannot carry: the client's request is bad
            raise BadRequestError(f"a request header cannot be forwarded: {exc}") from None
        except httpx.TransportError:
            raise UnavailableError("the progress service is unreachable; try again shortly") from None
        response_headers = {k: v for k in FORWARDED_RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None}
        if upstream.status_code != 200:
            body = await upstream.aread()
            await upstream.aclose()
            return Response(body, status_code=upstream.status_code, headers=response_headers)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.TransportError:
                return  # the progress instance went away; the client reconnects with Last-Event-ID
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=200, headers=response_headers)
