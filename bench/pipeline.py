"""End-to-end timings against a running system (start it with `make run`).

    .venv/bin/python -m bench.pipeline [--base-url http://localhost:8000] [--objects 100] [--singles 20]

Prints: submit->completed latency of one object with all five operations (run alone, several times), and
the time from the first submission to the last completion of a burst of objects with three operations.
"""

import argparse
import asyncio
import statistics
import time
import uuid

import httpx

MAX_SUBMIT_ATTEMPTS = 30
FIVE = ["validate", "transform", "enrich", "analyze", "export"]
THREE = ["validate", "transform", "analyze"]
RECORDS = [{"name": f"user-{i}", "age": 20 + i % 50, "city": ["Oslo", "Lima", "Pune"][i % 3]} for i in range(20)]


async def _wait_completed(client: httpx.AsyncClient, object_id: str) -> float:
    while True:
        document = (await client.get(f"/api/v1/progress/{object_id}")).json()
        if document["state"] in ("completed", "failed", "cancelled"):
            if document["state"] != "completed":
                raise RuntimeError(f"{object_id} ended {document['state']}: {document['error_message']}")
            return time.perf_counter()
        await asyncio.sleep(0.005)


async def _submit(client: httpx.AsyncClient, operations: list[str]) -> str:
    """Submit, as a well-behaved client does: a 503 (the gateway shedding load) is retried after its Retry-After,
    with the same identifier, so a retried submission is never counted twice."""
    body = {"identifier": f"bench-{uuid.uuid4().hex}", "operations": operations, "payload": RECORDS}
    response = await client.post("/api/v1/process", json=body)
    for _ in range(MAX_SUBMIT_ATTEMPTS):
        if response.status_code != 503:
            break
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        response = await client.post("/api/v1/process", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


async def single_latency(client: httpx.AsyncClient, runs: int) -> list[float]:
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        object_id = await _submit(client, FIVE)
        latencies.append(await _wait_completed(client, object_id) - start)
    return latencies


async def burst(client: httpx.AsyncClient, count: int) -> tuple[float, float]:
    start = time.perf_counter()
    ids = await asyncio.gather(*(_submit(client, THREE) for _ in range(count)))
    submitted = time.perf_counter() - start
    finished = await asyncio.gather(*(_wait_completed(client, i) for i in ids))
    return submitted, max(finished) - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://localhost:8000")
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--singles", type=int, default=20)
    args = parser.parse_args()
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=60, limits=limits) as client:
        status = (await client.get("/api/v1/status")).json()
        print(f"system: {args.base_url}, max_workers={status['max_workers']}")
        latencies = await single_latency(client, args.singles)
        ms = sorted(x * 1000 for x in latencies)
        print(
            f"one object, five operations, alone ({args.singles} runs): "
            f"p50 {statistics.median(ms):.0f} ms, min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms"
        )
        submitted, total = await burst(client, args.objects)
        print(
            f"{args.objects} objects x three operations: all submitted in {submitted:.2f} s, "
            f"first submit -> last completed {total:.2f} s ({args.objects / total:.1f} objects/s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
