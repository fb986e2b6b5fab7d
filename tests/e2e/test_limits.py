"""Rate limits shared by two gateway instances through Redis, and the cap on open streams per key: each at and
just past its bound."""

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from deploy.local.stack import Stack
from tests.e2e.client import unique
from tests.e2e.test_security import assert_problem, bearer, create_key

PER_KEY = 5
ANONYMOUS = 3
STREAMS = 2


@pytest.fixture(scope="module")
def limited(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory(
        "limited",
        auth=True,
        gateways=2,
        executors=1,
        rate_limit_per_minute=PER_KEY,
        rate_limit_anonymous_per_minute=ANONYMOUS,
        max_streams_per_key=STREAMS,
    )


@pytest.fixture
async def gateways(limited: Stack) -> AsyncIterator[list[httpx.AsyncClient]]:
    ports = [limited.settings.gateway_port, *limited.gateway_ports]
    assert len(ports) == 2
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) for port in ports]
    yield clients
    for client in clients:
        await client.aclose()


async def test_the_per_key_limit_is_shared_by_both_gateways(limited: Stack, gateways: list[httpx.AsyncClient]) -> None:
    key = await asyncio.to_thread(create_key, limited, "acme", "read")
    remaining = []
    for n in range(PER_KEY):
        response = await gateways[n % 2].get("/api/v1/status", headers=bearer(key))
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Limit"] == str(PER_KEY)
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    for client in gateways:  # just past the bound, on either instance
        refused = await client.get("/api/v1/status", headers=bearer(key))
        body = assert_problem(refused, 429)
        assert "rate limit" in body["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 // PER_KEY
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert int(refused.headers["RateLimit-Reset"]) > 0
    other = await asyncio.to_thread(create_key, limited, "acme", "read")
    assert (await gateways[0].get("/api/v1/status", headers=bearer(other))).status_code == 200


async def test_requests_without_valid_credentials_are_limited_per_address(
    gateways: list[httpx.AsyncClient],
) -> None:
    # The address' allowance may be partly used by other tests of this module: use it up, then check the refusal.
    statuses = [(await gateways[n % 2].get("/api/v1/status")).status_code for n in range(ANONYMOUS + 1)]
    assert statuses.count(401) <= ANONYMOUS
    assert statuses[-1] == 429
    refused = await gateways[0].get("/api/v1/status", headers=bearer("opa_00000000_" + "A" * 43))
    assert_problem(refused, 429)
    assert "Retry-After" in refused.headers


async def test_open_streams_per_key_are_capped(limited: Stack, gateways: list[httpx.AsyncClient]) -> None:
    submitter = await asyncio.to_thread(create_key, limited, "acme", "submit")
    reader = await asyncio.to_thread(create_key, limited, "acme", "read")
    executor = limited.process("executor-1").popen
    executor.send_signal(signal.SIGSTOP)  # the object stays processing, so its streams stay open
    try:
        answer = await gateways[0].post(
            "/api/v1/process",
            json={"identifier": unique("capped"), "operations": ["validate"]},
            headers=bearer(submitter),
        )
        assert answer.status_code == 202, answer.text
        path = f"/api/v1/progress/{answer.json()['id']}/stream"
        # Straight to the progress service (as docker-compose's nginx sends streams): no request rate limit there.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{limited.settings.progress_port}", timeout=30, headers=bearer(reader)
        ) as progress:
            first = await open_stream(progress, path)
            second = await open_stream(progress, path)
            assert (first.status_code, second.status_code) == (200, 200)  # at the bound
            refused = await progress.get(path)
            body = assert_problem(refused, 429)  # just past it
            assert "streams" in body["detail"]
            assert "Retry-After" in refused.headers
            await first.aclose()
            # The closed stream's slot comes back (as soon as the server notices the disconnect).
            third = await open_stream(progress, path)
            for _ in range(50):
                if third.status_code == 200:
                    break
                await third.aclose()
                await asyncio.sleep(0.2)
                third = await open_stream(progress, path)
            assert third.status_code == 200
            await asyncio.gather(second.aclose(), third.aclose())
    finally:
        executor.send_signal(signal.SIGCONT)


async def open_stream(client: httpx.AsyncClient, path: str) -> httpx.Response:
    response = await client.send(client.build_request("GET", path), stream=True)
    if response.status_code == 200:
        # Wait for the first event (the slot is held by then). The line iterator is kept with the response: a
        # dropped one is finalised, and that closes the stream.
        lines = response.aiter_lines()
        OPEN_ITERATORS.append(lines)
        await anext(lines)
    return response


OPEN_ITERATORS: list[object] = []
