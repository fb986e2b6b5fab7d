"""The dead-letter queue through the API: failed objects are listed a page at a time and re-queued in bulk."""

import httpx

from deploy.local.stack import Stack
from tests.e2e.client import submit, unique, wait_for


async def _failed_object(api: httpx.AsyncClient, stack: Stack) -> str:
    accepted = await submit(api, ["validate"], source=f"s3://{stack.settings.s3_bucket}/missing/{unique('x')}.json")
    assert (await wait_for(api, accepted["id"]))["state"] == "failed"
    return str(accepted["id"])


async def test_failed_objects_are_listed_page_by_page(api: httpx.AsyncClient, stack: Stack) -> None:
    ids = {await _failed_object(api, stack) for _ in range(3)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"state": "failed", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/api/v1/objects", params=params)).json()
        assert len(page["items"]) <= 2
        assert all(item["state"] == "failed" for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids <= set(seen)
    assert len(seen) == len(set(seen)), "no object appears on two pages"


async def test_bulk_retry_requeues_failed_objects_and_refuses_others(api: httpx.AsyncClient, stack: Stack) -> None:
    failed = await _failed_object(api, stack)
    done = await submit(api, ["validate"], payload={"a": 1})
    await wait_for(api, done["id"])
    response = await api.post("/api/v1/objects/retry", json={"ids": [failed, done["id"]]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["retried"] == [failed]
    assert [r["id"] for r in body["refused"]] == [done["id"]]
    assert (await wait_for(api, failed))["state"] == "failed", "it fails again: its source is still missing"
    detail = (
        await api.get(f"/api/v1/objects/{(await api.get(f'/api/v1/progress/{failed}')).json()['identifier']}")
    ).json()
    assert detail["attempt"] == 2


async def test_bad_listing_parameters_are_422(api: httpx.AsyncClient) -> None:
    for params in ({"state": "sleeping"}, {"limit": 0}, {"cursor": "not-a-cursor"}):
        response = await api.get("/api/v1/objects", params=params)
        assert response.status_code == 422, (params, response.text)
    response = await api.post("/api/v1/objects/retry", json={})
    assert response.status_code == 422
