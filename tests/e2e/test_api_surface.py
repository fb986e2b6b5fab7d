"""The README's examples, the documentation endpoints, status and health."""

import asyncio
from collections.abc import AsyncIterator

import httpx

from deploy.local.stack import Stack
from tests.e2e.client import unique, wait_for


async def test_seed_readme_examples_work_as_shown(api: httpx.AsyncClient) -> None:
    identifier = unique("object")
    created = await api.post(
        "/api/v1/process", json={"identifier": identifier, "operations": ["validate", "transform", "analyze"]}
    )
    assert created.status_code == 202
    body = created.json()
    assert set(body) == {"id", "identifier", "state", "task_id", "message"}
    assert body["state"] == "queued"
    assert body["message"] == "Object queued for processing"

    document = (await api.get(f"/api/v1/progress/{body['id']}")).json()
    expected = {
        "id",
        "identifier",
        "state",
        "current_operation",
        "progress",
        "operations_status",
        "s3_artifacts",
        "error_message",
    }
    assert expected <= set(document)
    assert set(document["progress"]) == {"current", "total", "message"}

    status = (await api.get("/api/v1/status")).json()
    assert set(status) == {"queue_size", "active_workers", "max_workers"}
    assert status["max_workers"] == 3

    done = await wait_for(api, body["id"])
    found = (await api.get(f"/api/v1/objects/{identifier}")).json()
    assert found["id"] == body["id"]
    assert found["state"] == done["state"] == "completed"
    assert found["s3_artifacts"] == done["s3_artifacts"]


async def test_openapi_documents_every_endpoint_and_its_errors(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/process", "post"),
        ("/api/v1/progress/{id}", "get"),
        ("/api/v1/progress/{id}/stream", "get"),
        ("/api/v1/status", "get"),
        ("/api/v1/objects/{identifier}", "get"),
        ("/api/v1/objects/{id}/cancel", "post"),
        ("/api/v1/objects/{id}/retry", "post"),
    ]:
        assert method in paths[path], path
    assert {"202", "200", "413", "422", "503"} <= set(paths["/api/v1/process"]["post"]["responses"])
    assert "409" in paths["/api/v1/objects/{id}/cancel"]["post"]["responses"]
    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_every_service_reports_healthy(stack: Stack) -> None:
    urls = [p.health_url for p in stack.processes if p.health_url and "moto" not in p.health_url]
    assert len(urls) >= 6, urls  # gateway, orchestrator, three executors, progress
    async with httpx.AsyncClient(timeout=5) as client:
        responses = await asyncio.gather(*(client.get(url) for url in urls if url))
    assert all(r.status_code == 200 for r in responses), [(r.url, r.status_code) for r in responses]


async def test_every_response_has_a_request_id_and_security_headers(api: httpx.AsyncClient) -> None:
    mine = await api.get("/api/v1/status", headers={"X-Request-ID": "trace-123"})
    assert mine.headers["x-request-id"] == "trace-123"
    fresh = await api.get("/api/v1/progress/not-a-uuid")
    assert len(fresh.headers["x-request-id"]) == 32
    for response in (mine, fresh):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert (
        "access-control-allow-origin"
        not in (await api.get("/api/v1/status", headers={"Origin": "https://x.example"})).headers
    )


async def test_a_body_over_the_limit_is_refused_before_it_is_read(api: httpx.AsyncClient) -> None:
    big = b'{"identifier": "x", "operations": ["validate"], "payload": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = await api.post("/api/v1/process", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "source" in response.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while it streams in
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = await api.post("/api/v1/process", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
