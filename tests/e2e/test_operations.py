"""Operations through the whole system: options, chaining, large streamed sources, plugins."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from types_aiobotocore_s3 import S3Client

from deploy.local.stack import Stack
from tests.e2e.client import submit, unique, wait_for
from tests.e2e.s3 import read_json, s3

PEOPLE = [
    {"name": "Ada", "email": "ada@example.org", "age": "36"},
    {"name": "Grace", "email": "grace@example.org", "age": "45"},
    {"name": "Linus", "email": "linus@example.org", "age": "28"},
]


@pytest.fixture
async def storage(stack: Stack) -> AsyncIterator[S3Client]:
    assert stack.settings.s3_endpoint_url
    async with s3(stack.settings.s3_endpoint_url, stack.settings.s3_bucket) as client:
        yield client


async def test_chained_operations_see_the_transformed_data(api: httpx.AsyncClient, storage: S3Client) -> None:
    options: dict[str, Any] = {
        "transform": {"steps": [{"op": "cast", "types": {"age": "int"}}, {"op": "filter", "expression": "age > `30`"}]},
        "export": {"format": "ndjson"},
    }
    accepted = await submit(api, ["transform", "analyze", "export"], payload=PEOPLE, options=options)
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    analyze = await read_json(storage, done["s3_artifacts"]["analyze"])
    assert analyze["result"]["record_count"] == 2
    assert analyze["result"]["fields"]["age"]["numeric"]["mean"] == 40.5
    export = await read_json(storage, done["s3_artifacts"]["export"])
    bucket, _, key = export["result"]["url"].removeprefix("s3://").partition("/")
    body = await (await storage.get_object(Bucket=bucket, Key=key))["Body"].read()
    assert [orjson.loads(line)["name"] for line in body.splitlines()] == ["Ada", "Grace"]


async def test_plugin_operation_registered_through_the_entry_point_runs_end_to_end(
    api: httpx.AsyncClient, storage: S3Client
) -> None:
    accepted = await submit(api, ["redact", "analyze"], payload=PEOPLE, options={"redact": {"fields": ["email"]}})
    done = await wait_for(api, accepted["id"])
    assert done["state"] == "completed", done
    redact = await read_json(storage, done["s3_artifacts"]["redact"])
    assert redact["result"]["records_redacted"] == 3
    analyze = await read_json(storage, done["s3_artifacts"]["analyze"])
    assert analyze["result"]["fields"]["email"]["string"]["top"] == [{"value": "[redacted]", "count": 3}]


async def test_plugin_options_are_checked_at_submission(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/process",
        json={"identifier": unique("redact"), "operations": ["redact"], "options": {"redact": {"fields": []}}},
    )
    assert response.status_code == 422
    assert "redact" in response.json()["detail"]


async def test_large_streamed_source_completes_every_operation(
    api: httpx.AsyncClient, storage: S3Client, stack: Stack
) -> None:
    count = 200_000
    body = b"".join(
        orjson.dumps({"id": i, "group": f"g{i % 50}", "value": i % 1000, "note": "x" * (i % 40)}) + b"\n"
        for i in range(count)
    )
    assert len(body) > 10_000_000  # tens of MB
    key = f"inputs/{unique('large')}.ndjson"
    await storage.put_object(Bucket=stack.settings.s3_bucket, Key=key, Body=body)
    accepted = await submit(
        api,
        ["validate", "transform", "enrich", "analyze", "export"],
        source=f"s3://{stack.settings.s3_bucket}/{key}",
        options={"transform": {"steps": [{"op": "drop", "fields": ["note"]}]}, "export": {"format": "csv"}},
    )
    done = await wait_for(api, accepted["id"], timeout=300)
    assert done["state"] == "completed", done
    validate = await read_json(storage, done["s3_artifacts"]["validate"])
    assert validate["input"]["size_bytes"] == len(body)
    assert validate["result"]["record_count"] == count
    analyze = await read_json(storage, done["s3_artifacts"]["analyze"])
    fields = analyze["result"]["fields"]
    assert "note" not in fields, "analyze saw transform's output"
    assert fields["value"]["numeric"]["mean"] == pytest.approx(sum(i % 1000 for i in range(count)) / count)
    assert fields["group"]["distinct"] == 50
    assert fields["id"]["distinct_exact"] is False
    assert abs(fields["id"]["distinct"] - count) / count < 0.03
    export = await read_json(storage, done["s3_artifacts"]["export"])
    assert export["result"]["record_count"] == count
