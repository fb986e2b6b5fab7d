"""What a client of the API does in these tests: submit, poll, read SSE."""

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "cancelled"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def submit(
    api: httpx.AsyncClient, operations: list[str], identifier: str | None = None, **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/process", json={"identifier": identifier or unique("obj"), "operations": operations, **extra}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def progress(api: httpx.AsyncClient, object_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/v1/progress/{object_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(
    api: httpx.AsyncClient, object_id: str, states: set[str] | str = TERMINAL, timeout: float = 60
) -> dict[str, Any]:
    wanted = {states} if isinstance(states, str) else states
    deadline = time.monotonic() + timeout
    while True:
        document = await progress(api, object_id)
        if document["state"] in wanted:
            return document
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{object_id} still {document['state']} after {timeout}s (wanted {wanted}): {document}"
            )
        await asyncio.sleep(0.05)


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]


async def read_sse(
    api: httpx.AsyncClient,
    object_id: str,
    last_event_id: str | None = None,
    timeout: float = 60,
    params: dict[str, str] | None = None,
) -> tuple[int, list[SseEvent]]:
    """Reads the stream until the server ends it. Returns the status code and the events."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[SseEvent] = []
    async with (
        asyncio.timeout(timeout),
        api.stream("GET", f"/api/v1/progress/{object_id}/stream", headers=headers, params=params) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return response.status_code, events
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    events.append(SseEvent(fields.get("id"), fields.get("event"), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[key] = fields[key] + "\n" + value if key == "data" and key in fields else value
    return 200, events
