"""The gateway sheds load beyond its in-flight cap at once, instead of queueing every request."""

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.gateway.middleware import LoadSheddingMiddleware


def slow_app(release: asyncio.Event) -> Starlette:
    async def slow(_request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("done")

    async def quick(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/slow", slow), Route("/health", quick), Route("/x/stream", slow)])


async def test_requests_past_the_cap_get_503_at_once_and_the_others_finish() -> None:
    release = asyncio.Event()
    app = LoadSheddingMiddleware(slow_app(release), max_in_flight=3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(3)]
        while app.in_flight < 3:
            await asyncio.sleep(0.01)

        refused = await client.get("/slow")
        health = await client.get("/health")
        stream = asyncio.create_task(client.get("/x/stream"))
        await asyncio.sleep(0.05)
        assert not stream.done(), "streams are not counted: it was let through and waits like the others"

        release.set()
        answers = await asyncio.gather(*held, stream)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "capacity" in refused.json()["detail"]
    assert health.status_code == 200
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert app.in_flight == 0
