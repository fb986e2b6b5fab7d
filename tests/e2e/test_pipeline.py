"""The pipeline end to end: every service its own process, real PostgreSQL, Redis and S3."""

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from itertools import accumulate
from typing import Any

import httpx
import orjson
import pytest
from types_aiobotocore_s3 import S3Client

from deploy.local.stack import Stack
from libs.common.domain import Operation
from tests.e2e.client import progress, read_sse, submit, unique, wait_for
from tests.e2e.s3 import etag, read_json, s3

ALL_OPERATIONS = [op.value for op in Operation]
RECORDS = [
    {"name": " Ada ", "age": 36, "city": "London"},
    {"name": "Grace", "age": 45, "city": "New York"},
    {"name": "Linus", "age": None, "city": "Helsinki"},
]


@pytest.fixture
async def storage(stack: Stack) -> AsyncIterator[S3Client]:
    assert stack.settings.s3_endpoint_url
    async with s3(stack.settings.s3_endpoint_url, stack.settings.s3_bucket) as client:
        yield client


@pytest.mark.parametrize("operation", ALL_OPERATIONS)
async def test_each_operation_alone_completes_with_its_artifact(
    api: httpx.AsyncClient, storage: S3Client, operation: str
) -> None:
    accepted = await submit(api, [operation], payload=RECORDS)
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    url = done["s3_artifacts"][operation]
    assert url.endswith(f"/{accepted['identifier']}/{operation}_result.json")
    artifact = await read_json(storage, url)
    assert artifact["operation"] == operation
    assert artifact["status"] == "succeeded"
    assert artifact["object_id"] == accepted["id"]
    assert artifact["input"]["sha256"]
    assert artifact["result"], "an operation must produce a result, not an empty document"


async def test_all_five_operations_complete_with_one_artifact_each(api: httpx.AsyncClient, storage: S3Client) -> None:
    accepted = await submit(api, ALL_OPERATIONS, payload=RECORDS, options={"export": {"format": "csv"}})
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    assert done["progress"] == {"current": 5, "total": 5, "message": "All operations completed"}
    assert set(done["s3_artifacts"]) == set(ALL_OPERATIONS)
    assert all(status["completed"] for status in done["operations_status"].values())
    artifacts = {op: await read_json(storage, url) for op, url in done["s3_artifacts"].items()}
    # Operations after transform see its output: snake_cased keys and trimmed strings.
    assert artifacts["transform"]["output_url"]
    assert artifacts["analyze"]["result"]["fields"]["name"]["string"]["top"][0]["value"] in {"Ada", "Grace", "Linus"}
    assert artifacts["enrich"]["input"]["url"] == artifacts["transform"]["output_url"]
    export = artifacts["export"]["result"]
    assert export["format"] == "csv"
    assert export["record_count"] == 3


async def test_object_without_data_is_processed_from_its_own_record(api: httpx.AsyncClient, storage: S3Client) -> None:
    accepted = await submit(api, ["validate", "enrich"], metadata={"owner": "team-a"})
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed"
    enrich = await read_json(storage, done["s3_artifacts"]["enrich"])
    assert enrich["input"]["kind"] == "record"
    assert set(enrich["result"]["fields"]) == {"identifier", "metadata"}


async def test_sse_stream_delivers_every_change_in_order_through_completion(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate", "transform", "analyze"], payload=RECORDS)
    # Last-Event-ID 0 asks for the object's whole history, so the test does not depend on how fast it connects;
    # everything after the replay arrives live.
    status, events = await read_sse(api, accepted["id"], last_event_id="0")
    assert status == 200
    ids = [int(e.id) for e in events if e.id is not None]
    assert len(ids) == len(events), "every event carries an id"
    assert ids == list(range(1, len(ids) + 1)), "ids are the object's event numbers, in order, without gaps"
    assert all(e.event is None for e in events), "progress events are unnamed, so EventSource.onmessage sees them"
    assert all(e.data["id"] == accepted["id"] for e in events)
    states = [e.data["state"] for e in events]
    assert states[0] == "queued"
    assert states[-1] == "completed"
    transitions = {(a, b) for a, b in itertools.pairwise(states) if a != b}
    assert transitions == {("queued", "processing"), ("processing", "completed")}, states
    newly_completed = [
        sorted(
            op
            for op, status in after.data["operations_status"].items()
            if status["completed"] and not before.data["operations_status"][op]["completed"]
        )
        for before, after in itertools.pairwise(events)
    ]
    assert [ops for ops in newly_completed if ops] == [["validate"], ["transform"], ["analyze"]], (
        "one event per completed operation, in order"
    )
    running = [
        e.data["current_operation"]
        for e in events
        if e.data["state"] == "processing" and not e.data["operations_status"][e.data["current_operation"]]["completed"]
    ]
    # Each operation is shown running before it completes: at dispatch, or in the event of the one before it.
    assert list(dict.fromkeys(running)) == ["validate", "transform", "analyze"]


async def test_sse_stream_connected_while_processing_follows_live_to_the_end(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate", "transform", "enrich", "analyze", "export"], payload=RECORDS)
    status, events = await read_sse(api, accepted["id"])
    assert status == 200
    ids = [int(e.id or 0) for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "after the first (current) document, no change is missed"
    assert events[-1].data["state"] == "completed"


async def test_sse_resumes_from_last_event_id_without_gaps(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate", "analyze"], payload=RECORDS)
    done = await wait_for(api, accepted["id"])
    _, everything = await read_sse(api, accepted["id"], last_event_id="0")
    final_id = int(everything[-1].id or 0)
    assert [int(e.id or 0) for e in everything] == list(range(1, final_id + 1))
    status, resumed = await read_sse(api, accepted["id"], last_event_id="2")
    assert status == 200
    assert [int(e.id or 0) for e in resumed] == list(range(3, final_id + 1))
    assert resumed[-1].data == done | {"updated_at": resumed[-1].data["updated_at"]}
    status, nothing = await read_sse(api, accepted["id"], last_event_id=str(final_id))
    assert status == 204, "a client that has the final event is told to stop reconnecting"
    assert nothing == []


async def test_sse_after_completion_sends_the_final_document_and_ends(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["enrich"], payload={"a": 1})
    await wait_for(api, accepted["id"])
    status, events = await read_sse(api, accepted["id"])
    assert status == 200
    assert len(events) == 1
    assert events[0].data["state"] == "completed"


async def test_sse_of_unknown_object_is_404(api: httpx.AsyncClient) -> None:
    status, _ = await read_sse(api, "00000000-0000-4000-8000-000000000000")
    assert status == 404


async def _sample_processing(api: httpx.AsyncClient, stop: asyncio.Event, seen: list[int]) -> None:
    while not stop.is_set():
        response = await api.get("/api/v1/status")
        seen.append(response.json()["active_workers"])
        await asyncio.sleep(0.01)


async def _submit_burst_and_check_cap(
    api: httpx.AsyncClient, count: int, operations: list[str]
) -> tuple[list[int], int]:
    """Submit `count` objects at once; returns what the status endpoint said was processing while they ran, and the
    most that were processing at once by their own records (started_at to finished_at, which no sampler can miss)."""
    seen: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_processing(api, stop, seen))
    accepted = await asyncio.gather(*(submit(api, operations, payload=RECORDS) for _ in range(count)))
    finished = await asyncio.gather(*(wait_for(api, a["id"], timeout=120) for a in accepted))
    stop.set()
    await sampler
    assert [f["state"] for f in finished] == ["completed"] * count
    records = [(await api.get(f"/api/v1/objects/{a['identifier']}")).json() for a in accepted]
    # A slot freed and filled in one transaction: the finish is stamped before the start, and sorts first on a tie.
    moments = sorted(
        [(datetime.fromisoformat(r["started_at"]), 1) for r in records]
        + [(datetime.fromisoformat(r["finished_at"]), -1) for r in records]
    )
    at_once = max(accumulate(step for _, step in moments))
    return seen, at_once


async def test_thirty_objects_at_once_never_exceed_three_processing(api: httpx.AsyncClient) -> None:
    # The samples of the status endpoint are as many as the machine's speed allows; the objects' own records are
    # the check that cannot miss a moment.
    seen, at_once = await _submit_burst_and_check_cap(api, 30, ["validate", "transform", "analyze"])
    assert at_once == 3, "thirty at once fill the three slots, and never more"
    assert max(seen) <= 3, seen


async def test_two_orchestrators_together_respect_the_cap(stack_factory: Callable[..., Stack]) -> None:
    pair = stack_factory("two-orchestrators", orchestrators=2)
    async with httpx.AsyncClient(base_url=pair.base_url, timeout=30) as api:
        seen, at_once = await _submit_burst_and_check_cap(api, 15, ["validate", "enrich", "analyze"])
    assert at_once == 3, "fifteen at once fill the three slots, and never more"
    assert max(seen) <= 3, seen


async def test_resubmitting_an_identifier_returns_the_existing_object(api: httpx.AsyncClient) -> None:
    identifier = unique("again")
    first = await submit(api, ["validate"], identifier=identifier, payload=RECORDS)
    await wait_for(api, first["id"])
    again = await api.post("/api/v1/process", json={"identifier": identifier, "operations": ["analyze", "export"]})
    assert again.status_code == 200
    body = again.json()
    assert body["id"] == first["id"]
    assert body["task_id"] == first["task_id"]
    assert body["state"] == "completed"
    assert (await progress(api, first["id"]))["operations"] == ["validate"], "the existing object is unchanged"


async def test_concurrent_submissions_of_one_identifier_create_one_object(api: httpx.AsyncClient) -> None:
    identifier = unique("race")
    body = {"identifier": identifier, "operations": ["validate"], "payload": RECORDS}
    responses = await asyncio.gather(*(api.post("/api/v1/process", json=body) for _ in range(8)))
    assert {r.status_code for r in responses} <= {200, 202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.status_code == 202 for r in responses) == 1


async def test_a_get_right_after_submission_finds_the_object(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate"], payload=RECORDS)
    found = await api.get(f"/api/v1/objects/{accepted['identifier']}")
    assert found.status_code == 200
    assert found.json()["id"] == accepted["id"]
    assert (await api.get(f"/api/v1/progress/{accepted['id']}")).status_code == 200


async def test_failing_operation_fails_the_object_with_a_useful_message(
    api: httpx.AsyncClient, storage: S3Client, stack: Stack
) -> None:
    options: dict[str, Any] = {"validate": {"required": ["email"]}}
    accepted = await submit(api, ["validate", "analyze"], payload=RECORDS, options=options)
    failed = await wait_for(api, accepted["id"])
    assert failed["state"] == "failed"
    assert "validate" in failed["error_message"]
    assert "$[0].email" in failed["error_message"]
    assert failed["operations_status"]["analyze"]["completed"] is False
    report = await read_json(storage, f"s3://{stack.settings.s3_bucket}/{accepted['identifier']}/validate_result.json")
    assert report["status"] == "failed"
    assert report["result"]["invalid_records"] == 3


async def test_source_in_s3_is_read_in_its_format(api: httpx.AsyncClient, storage: S3Client, stack: Stack) -> None:
    bucket = stack.settings.s3_bucket
    key = f"inputs/{unique('people')}.csv"
    await storage.put_object(Bucket=bucket, Key=key, Body=b"name,age\nAda,36\nGrace,45\n", ContentType="text/csv")
    accepted = await submit(
        api,
        ["transform", "analyze"],
        source=f"s3://{bucket}/{key}",
        options={"transform": {"steps": [{"op": "cast", "types": {"age": "int"}}]}},
    )
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    analyze = await read_json(storage, done["s3_artifacts"]["analyze"])
    assert analyze["result"]["fields"]["age"]["numeric"]["mean"] == 40.5


async def test_missing_source_fails_the_object(api: httpx.AsyncClient, stack: Stack) -> None:
    accepted = await submit(api, ["validate"], source=f"s3://{stack.settings.s3_bucket}/nowhere/{unique('x')}.json")
    failed = await wait_for(api, accepted["id"])
    assert failed["state"] == "failed"
    assert "not found" in failed["error_message"]


async def test_retry_of_a_failed_object_resumes_after_its_completed_operations(
    api: httpx.AsyncClient, storage: S3Client, stack: Stack
) -> None:
    bucket = stack.settings.s3_bucket
    key = f"inputs/{unique('retry')}.json"
    await storage.put_object(Bucket=bucket, Key=key, Body=orjson.dumps([{"n": "1"}, {"n": "abc"}]))
    options = {"transform": {"steps": [{"op": "cast", "types": {"n": "int"}}]}}
    accepted = await submit(api, ["validate", "transform", "analyze"], source=f"s3://{bucket}/{key}", options=options)
    failed = await wait_for(api, accepted["id"])
    assert failed["state"] == "failed"
    assert "transform" in failed["error_message"]
    validate_url = failed["s3_artifacts"]["validate"]
    validate_version = await etag(storage, validate_url)

    await storage.put_object(Bucket=bucket, Key=key, Body=orjson.dumps([{"n": "1"}, {"n": "2"}]))
    retried = await api.post(f"/api/v1/objects/{accepted['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["state"] == "queued"
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    assert done["task_id"] != accepted["task_id"], "a retry is a new run"
    assert done["error_message"] is None
    assert await etag(storage, validate_url) == validate_version, "validate completed before: it must not run again"
    analyze = await read_json(storage, done["s3_artifacts"]["analyze"])
    assert analyze["result"]["fields"]["n"]["numeric"]["sum"] == 3


async def test_retry_of_an_object_that_did_not_fail_is_409(api: httpx.AsyncClient) -> None:
    accepted = await submit(api, ["validate"], payload=RECORDS)
    await wait_for(api, accepted["id"])
    response = await api.post(f"/api/v1/objects/{accepted['id']}/retry")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "failed" in response.json()["detail"]
