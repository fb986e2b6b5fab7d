"""Crash recovery with every service as its own process: killed executors, graceful stops, Redis losing its data."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from deploy.local.stack import Stack
from tests.e2e.client import progress, submit, wait_for
from tests.e2e.s3 import read_json, s3

CLAIM_IDLE_MS = 3000


@pytest.fixture(scope="module")
def recovering(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory("recovery", extra_env={"CLAIM_IDLE_MS": str(CLAIM_IDLE_MS), "RECLAIM_INTERVAL_SECONDS": "0.5"})


@pytest.fixture
async def api(recovering: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=recovering.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def slow_source(recovering: Stack) -> str:
    """About 25 MB of NDJSON: each operation on it takes long enough to be interrupted."""
    assert recovering.settings.s3_endpoint_url
    body = b"".join(orjson.dumps({"id": i, "name": f"n{i % 5000}", "v": i % 977}) + b"\n" for i in range(600_000))
    async with s3(recovering.settings.s3_endpoint_url, recovering.settings.s3_bucket) as client:
        await client.put_object(Bucket=recovering.settings.s3_bucket, Key="inputs/recovery.ndjson", Body=body)
    return f"s3://{recovering.settings.s3_bucket}/inputs/recovery.ndjson"


async def _running_executor(api: httpx.AsyncClient, recovering: Stack, object_id: str) -> str:
    """Wait until an executor has started the object's first operation; return that executor's name."""
    for _ in range(1200):
        document = await progress(api, object_id)
        if document["state"] == "processing":
            redis = Redis.from_url(recovering.settings.redis_url)
            try:
                pending = await redis.xpending_range("operations:commands", "executor", min="-", max="+", count=100)
            finally:
                await redis.aclose()
            owners = {str(entry["consumer"], "utf-8") for entry in pending}  # type: ignore[arg-type]
            if owners:
                return owners.pop()
        await asyncio.sleep(0.05)
    raise AssertionError("no executor picked the operation up")


def _respawn(recovering: Stack, name: str) -> None:
    process = recovering.process(name)
    port = process.health_url.split(":")[-1].split("/")[0] if process.health_url else "0"
    recovering.processes.remove(process)
    recovering._service(name, "executor", int(port))


async def test_killed_executor_s_operation_is_taken_over(
    api: httpx.AsyncClient, recovering: Stack, slow_source: str
) -> None:
    accepted = await submit(api, ["validate", "analyze"], source=slow_source)
    victim = await _running_executor(api, recovering, accepted["id"])
    os.kill(recovering.process(victim).popen.pid, signal.SIGKILL)
    try:
        done = await wait_for(api, accepted["id"], timeout=120)
        assert done["state"] == "completed", done
        assert recovering.settings.s3_endpoint_url
        async with s3(recovering.settings.s3_endpoint_url, recovering.settings.s3_bucket) as client:
            validate = await read_json(client, done["s3_artifacts"]["validate"])
        assert validate["executor_id"] != victim, "another executor finished the killed one's operation"
    finally:
        _respawn(recovering, victim)


async def test_sigterm_lets_the_running_operation_finish(
    api: httpx.AsyncClient, recovering: Stack, slow_source: str
) -> None:
    accepted = await submit(api, ["validate"], source=slow_source)
    victim = await _running_executor(api, recovering, accepted["id"])
    process = recovering.process(victim).popen
    process.send_signal(signal.SIGTERM)
    try:
        done = await wait_for(api, accepted["id"], timeout=120)
        assert done["state"] == "completed", done
        assert recovering.settings.s3_endpoint_url
        async with s3(recovering.settings.s3_endpoint_url, recovering.settings.s3_bucket) as client:
            validate = await read_json(client, done["s3_artifacts"]["validate"])
        assert validate["executor_id"] == victim, "the stopping executor finished its own work"
        # uvicorn re-raises the signal once shut down cleanly, so the exit status is "terminated by SIGTERM".
        assert process.wait(30) in (0, -signal.SIGTERM)
    finally:
        _respawn(recovering, victim)


async def test_objects_in_flight_complete_after_redis_loses_its_data(
    api: httpx.AsyncClient, recovering: Stack, slow_source: str
) -> None:
    accepted = [await submit(api, ["validate", "enrich"], source=slow_source) for _ in range(3)]
    accepted += [await submit(api, ["validate"], payload={"n": i}) for i in range(5)]
    await _running_executor(api, recovering, accepted[0]["id"])
    redis = Redis.from_url(recovering.settings.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    finished = await asyncio.gather(*(wait_for(api, a["id"], timeout=180) for a in accepted))
    assert [f["state"] for f in finished] == ["completed"] * len(accepted)
    after = await submit(api, ["validate"], payload={"after": True})
    assert (await wait_for(api, after["id"]))["state"] == "completed"
    assert all(p.popen.poll() is None for p in recovering.processes), "no service died"


async def test_a_repeated_submission_is_answered_while_the_orchestrator_cannot_answer(
    api: httpx.AsyncClient, recovering: Stack
) -> None:
    recorded = await submit(api, ["validate"], payload=[{"a": 1}])
    await wait_for(api, recorded["id"])
    orchestrator = recovering.process("orchestrator-1").popen
    orchestrator.send_signal(signal.SIGSTOP)
    try:
        again, new = await asyncio.gather(
            api.post("/api/v1/process", json={"identifier": recorded["identifier"], "operations": ["validate"]}),
            api.post(
                "/api/v1/process", json={"identifier": f"paused-{os.urandom(4).hex()}", "operations": ["validate"]}
            ),
        )
    finally:
        orchestrator.send_signal(signal.SIGCONT)
    assert again.status_code == 200, again.text  # recorded before: the gateway finds it itself
    assert again.json()["id"] == recorded["id"]
    assert new.status_code == 503, new.text  # nobody confirmed it: the client must repeat the request
