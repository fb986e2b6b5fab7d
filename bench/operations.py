"""Operations benchmark: each operation's throughput and the executor's peak memory on large NDJSON objects.

    .venv/bin/python -m bench.operations [--sizes 10,200] [--operations validate,transform,enrich,analyze,export]

It generates the NDJSON objects itself (realistic records of about 170 bytes), uploads them to an S3 endpoint
(S3_ENDPOINT_URL, or a moto server it starts), then runs each operation once per size in a fresh process,
exactly as an executor runs it (OperationRunner: streamed read from S3, artifact and outputs written to S3),
and prints MB/s (input size / wall time) and that process's peak RSS. A first row per size, `(s3 read)`, only
reads the object through the same streamed reader: the rate the S3 endpoint itself allows, the bound on every
operation.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from libs.common.events import RunOperationV1
from libs.common.s3 import s3_client
from libs.common.settings import S3Settings

MB = 1_000_000
CITIES = ["Oslo", "Lima", "Pune", "Accra", "Quito", "Hanoi", "Perth", "Turin"]
OPERATIONS = ["validate", "transform", "enrich", "analyze", "export"]
READ_ONLY = "(s3 read)"
OPTIONS: dict[str, dict[str, object]] = {
    "validate": {"required": ["id", "email"]},
    "transform": {
        "steps": [{"op": "cast", "types": {"age": "int"}}, {"op": "normalize", "fields": ["city"], "case": "upper"}]
    },
    "export": {"format": "csv"},
}


def _record(i: int, rng: random.Random) -> bytes:
    return orjson.dumps(
        {
            "id": i,
            "name": f"user-{rng.randrange(1_000_000)}",
            "email": f"user{i}@example.org",
            "age": rng.randrange(18, 90),
            "score": round(rng.random() * 100, 3),
            "city": rng.choice(CITIES),
            "active": rng.random() < 0.7,
            "tags": rng.sample(["a", "b", "c", "d", "e"], rng.randrange(0, 3)),
        }
    )


async def _upload(settings: S3Settings, key: str, size: int) -> int:
    from services.executor.storage import Storage

    rng = random.Random(size)
    async with s3_client(settings) as client:
        storage = Storage(client, settings.s3_bucket, attempts=3, backoff_seconds=0.2, presign_expiry=3600)
        async with storage.upload(key, "application/x-ndjson") as upload:
            i = 0
            while upload.size < size:
                chunk = b"".join(_record(i + n, rng) + b"\n" for n in range(5000))
                i += 5000
                await upload.write(chunk)
        return upload.size


async def _worker(settings: S3Settings, operation: str, url: str) -> dict[str, object]:
    from services.executor.records import BATCH_BYTES
    from services.executor.service import OperationRunner
    from services.executor.storage import Storage

    async with s3_client(settings) as client:
        storage = Storage(client, settings.s3_bucket, attempts=3, backoff_seconds=0.2, presign_expiry=3600)
        if operation == READ_ONLY:
            start = time.perf_counter()
            async with storage.open(url, BATCH_BYTES) as (chunks, _):
                async for _chunk in chunks:
                    pass
            return {"ok": True, "seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}
        runner = OperationRunner(storage, "bench", max_document_bytes=64 * MB)
        command = RunOperationV1(
            object_id=uuid.uuid4(),
            task_id=uuid.uuid4(),
            operation=operation,
            index=0,
            total=1,
            identifier=f"bench-{uuid.uuid4().hex[:8]}",
            data_url=url,
            data_format="ndjson",
            options=OPTIONS.get(operation, {}),  # type: ignore[arg-type]
        )
        start = time.perf_counter()
        result = await runner.run(command)
        elapsed = time.perf_counter() - start
    return {
        "ok": result.type == "operation.completed.v1",
        "error": getattr(result, "error", None),
        "seconds": elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(2)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,200", help="object sizes in MB")
    parser.add_argument("--operations", default=",".join(OPERATIONS))
    parser.add_argument("--worker", nargs=2, metavar=("OPERATION", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    if args.worker:
        settings = S3Settings(s3_endpoint_url=endpoint, s3_bucket=os.environ["BENCH_BUCKET"])
        print(json.dumps(asyncio.run(_worker(settings, *args.worker))))
        return
    moto = None
    if not endpoint:
        moto, endpoint = _start_moto()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    settings = S3Settings(s3_endpoint_url=endpoint, s3_bucket=bucket)
    try:
        asyncio.run(_create_bucket(settings))
        rows = []
        for size_mb in (int(s) for s in args.sizes.split(",")):
            key = f"inputs/bench-{size_mb}mb.ndjson"
            size = asyncio.run(_upload(settings, key, size_mb * MB))
            for operation in [READ_ONLY, *args.operations.split(",")]:
                env = {**os.environ, "S3_ENDPOINT_URL": endpoint, "BENCH_BUCKET": bucket}
                out = subprocess.run(
                    [sys.executable, "-m", "bench.operations", "--worker", operation, f"s3://{bucket}/{key}"],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                figures = json.loads(out.stdout.decode().strip().splitlines()[-1])
                rows.append((size / MB, operation, figures))
                mbps = size / MB / figures["seconds"]
                status = "ok" if figures["ok"] else f"FAILED: {figures['error']}"
                print(
                    f"{size / MB:8.1f} MB  {operation:<10} {figures['seconds']:7.2f} s  {mbps:7.1f} MB/s  peak RSS {figures['peak_rss_mb']:6.1f} MB  {status}",
                    flush=True,
                )
        print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, S3 endpoint {endpoint}")
    finally:
        if moto is not None:
            moto.terminate()


async def _create_bucket(settings: S3Settings) -> None:
    async with s3_client(settings) as client:
        await client.create_bucket(Bucket=settings.s3_bucket)


if __name__ == "__main__":
    main()
