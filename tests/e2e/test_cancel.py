"""Cancellation: at once for pending and queued objects, after the running operation for a processing one."""

import asyncio

import httpx
import orjson
import pytest

from deploy.local.stack import Stack
from tests.e2e.client import progress, submit, wait_for
from tests.e2e.s3 import s3

SLOW_OPERATIONS = ["validate", "enrich", "analyze"]


@pytest.fixture(scope="module")
async def slow_source(stack: Stack) -> str:
    """An NDJSON object big enough (about 25 MB) that each operation on it takes a noticeable time."""
    assert stack.settings.s3_endpoint_url
    lines = b"".join(
        orjson.dumps({"id": i, "name": f"user-{i % 977}", "score": (i * 7919) % 1000 / 10, "tags": ["a", "b"][: i % 3]})
        + b"\n"
        for i in range(300_000)
    )
    key = "inputs/slow.ndjson"
    async with s3(stack.settings.s3_endpoint_url, stack.settings.s3_bucket) as client:
        await client.put_object(Bucket=stack.settings.s3_bucket, Key=key, Body=lines)
    return f"s3://{stack.settings.s3_bucket}/{key}"


async def _wait_until_running(api: httpx.AsyncClient, object_id: str, operation: str) -> None:
    for _ in range(1200):
        document = await progress(api, object_id)
        if document["state"] == "processing" and document["current_operation"] == operation:
            return
        assert document["state"] in {"queued", "processing"}, document
        await asyncio.sleep(0.025)
    raise AssertionError(f"{object_id} never started {operation}")


async def test_cancel_of_a_processing_object_takes_effect_after_the_running_operation(
    api: httpx.AsyncClient, slow_source: str
) -> None:
    accepted = await submit(api, SLOW_OPERATIONS, source=slow_source)
    await _wait_until_running(api, accepted["id"], "validate")
    response = await api.post(f"/api/v1/objects/{accepted['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "processing"
    assert (await progress(api, accepted["id"]))["cancel_requested"] is True
    done = await wait_for(api, accepted["id"], timeout=120)
    assert done["state"] == "cancelled"
    statuses = done["operations_status"]
    assert statuses["validate"]["completed"] is True, "the running operation finishes"
    assert statuses["enrich"]["completed"] is False, "no further operation starts"
    assert statuses["analyze"]["completed"] is False
    assert set(done["s3_artifacts"]) == {"validate"}


async def test_cancel_of_a_queued_object_is_immediate(api: httpx.AsyncClient, slow_source: str) -> None:
    busy = [await submit(api, SLOW_OPERATIONS, source=slow_source) for _ in range(3)]
    waiting = await submit(api, ["validate"], payload={"a": 1})
    assert (await progress(api, waiting["id"]))["state"] == "queued"
    response = await api.post(f"/api/v1/objects/{waiting['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert (await progress(api, waiting["id"]))["state"] == "cancelled"
    for other in busy:  # leave the cap free for the other tests
        await api.post(f"/api/v1/objects/{other['id']}/cancel")
    for other in busy:
        assert (await wait_for(api, other["id"], timeout=120))["state"] == "cancelled"
    assert (await progress(api, waiting["id"]))["operations_status"]["validate"]["completed"] is False


async def test_cancel_of_a_terminal_object_is_409_and_changes_nothing(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate"], payload={"a": 1})
    before = await wait_for(api, accepted["id"])
    response = await api.post(f"/api/v1/objects/{accepted['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "completed" in response.json()["detail"]
    assert await progress(api, accepted["id"]) == before


async def test_cancel_of_an_unknown_object_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/objects/00000000-0000-4000-8000-000000000000/cancel")
    assert response.status_code == 404
