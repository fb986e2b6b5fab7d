"""Redis memory over a long run: does anything in Redis grow with the number of objects processed?

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 4] [--retention 60]

Starts the whole system (as `make run` does) against a Redis server of its own, so that the figures are this
system's alone, with a short stream retention; submits objects (validate, transform, analyze) at a steady
rate and samples Redis every `--sample` seconds: used memory, keys, stream lengths and consumers. Prints the
samples and the memory trend over the second half of the run (after the first retention window has passed,
when trimming has reached its steady state): flat means the slope is noise, not a function of objects done.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.pipeline import RECORDS, THREE
from deploy.local.stack import Stack, StackSettings, listen_ports
from libs.common.events.streams import CONSUMER_GROUPS


@dataclass
class Sample:
    elapsed: float
    submitted: int
    completed: int
    used_memory: int
    keys: int
    stream_lengths: dict[str, int]
    consumers: int


async def sample(redis: Redis, started: float, submitted: int, completed: int) -> Sample:
    info: Any = await redis.info("memory")
    lengths = {}
    consumers = 0
    for stream, groups in CONSUMER_GROUPS.items():
        lengths[stream] = await redis.xlen(stream)
        for group in groups:
            with contextlib.suppress(Exception):
                consumers += len(await redis.xinfo_consumers(stream, group))
    return Sample(
        time.monotonic() - started,
        submitted,
        completed,
        int(info["used_memory"]),
        int(await redis.dbsize()),
        lengths,
        consumers,
    )


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return statistics.linear_regression(xs, ys).slope * 60 if len(points) > 1 else 0.0


async def run(base_url: str, redis_url: str, minutes: float, rate: float, every: float) -> list[Sample]:
    redis = Redis.from_url(redis_url)
    samples: list[Sample] = []
    ids: list[str] = []
    done: set[str] = set()
    started = time.monotonic()
    deadline = started + minutes * 60
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def submitter() -> None:
            n = 0
            while time.monotonic() < deadline:
                response = await client.post(
                    "/api/v1/process",
                    json={"identifier": f"soak-{uuid.uuid4().hex}", "operations": THREE, "payload": RECORDS},
                )
                response.raise_for_status()
                ids.append(str(response.json()["id"]))
                n += 1
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))

        async def watcher() -> None:
            while True:
                for object_id in [i for i in ids if i not in done][:200]:
                    document = (await client.get(f"/api/v1/progress/{object_id}")).json()
                    if document["state"] in ("completed", "failed", "cancelled"):
                        done.add(object_id)
                await asyncio.sleep(1)

        watch = asyncio.create_task(watcher())
        submit = asyncio.create_task(submitter())
        while time.monotonic() < deadline:
            samples.append(await sample(redis, started, len(ids), len(done)))
            line = samples[-1]
            print(
                f"{line.elapsed:7.0f} s  submitted {line.submitted:6d}  completed {line.completed:6d}  "
                f"used_memory {line.used_memory / 2**20:7.2f} MiB  keys {line.keys:4d}  consumers {line.consumers:3d}  "
                + "  ".join(f"{name} {length}" for name, length in line.stream_lengths.items()),
                flush=True,
            )
            await asyncio.sleep(every)
        await submit
        watch.cancel()
    await redis.aclose()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=4.0, help="objects submitted per second")
    parser.add_argument("--retention", type=int, default=60, help="STREAM_RETENTION_SECONDS")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", StackSettings().database_url))
    args = parser.parse_args()

    redis_port, *ports = listen_ports(5 + StackSettings().executors)  # one run: no port given out twice
    redis_dir = Path(tempfile.mkdtemp(prefix="opa-soak-redis-"))
    redis_server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(redis_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    database = f"opa_soak_{uuid.uuid4().hex[:8]}"
    base = args.database_url.rsplit("/", 1)[0]
    settings = StackSettings(
        database_url=f"{base}/{database}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        s3_endpoint_url=None,
        gateway_port=ports[0],
        orchestrator_port=ports[1],
        progress_port=ports[2],
        moto_port=ports[3],
        executor_base_port=ports[4],  # and the ports after it, one per executor
    )
    extra_env = {
        "STREAM_RETENTION_SECONDS": str(args.retention),
        "MAINTENANCE_INTERVAL_SECONDS": "5",
        "LOG_LEVEL": "WARNING",
    }
    stack = Stack(settings, extra_env=extra_env, log_dir=Path("var/soak"))
    try:
        stack.start(timeout=90)
        print(
            f"soak: {args.minutes} min at {args.rate} objects/s, stream retention {args.retention} s, "
            f"Redis of its own on port {redis_port}"
        )
        samples = asyncio.run(run(stack.base_url, settings.redis_url, args.minutes, args.rate, args.sample))
    finally:
        stack.stop()
        redis_server.terminate()
        redis_server.wait()
        shutil.rmtree(redis_dir, ignore_errors=True)

    steady = [s for s in samples if s.elapsed >= max(args.retention * 1.5, args.minutes * 60 / 2)]
    if len(steady) < 2:
        print("run too short for a trend: make --minutes at least three retention windows")
        return
    memory = [(s.elapsed, s.used_memory / 2**20) for s in steady]
    objects = steady[-1].completed - steady[0].completed
    growth = steady[-1].used_memory - steady[0].used_memory
    print()
    print(
        f"steady state: {len(steady)} samples from {steady[0].elapsed:.0f} s to {steady[-1].elapsed:.0f} s, "
        f"{objects} objects completed in that window"
    )
    # Trimming makes memory a sawtooth: compare its troughs, one per retention window, not single samples.
    windows = [
        [s for s in steady if start <= s.elapsed < start + args.retention]
        for start in range(int(steady[0].elapsed), int(steady[-1].elapsed) + 1, args.retention)
    ]
    troughs = [(t.elapsed, t.used_memory / 2**20) for t in (min(w, key=lambda s: s.used_memory) for w in windows if w)]
    print(
        f"used_memory: min {min(m for _, m in memory):.2f} MiB, max {max(m for _, m in memory):.2f} MiB; "
        f"trend {slope_per_minute(memory):+.3f} MiB/min over the samples, {slope_per_minute(troughs):+.3f} MiB/min "
        f"over the troughs ({' '.join(f'{m:.2f}' for _, m in troughs)} MiB); "
        f"{growth / max(objects, 1):+.1f} bytes per object completed, first to last sample"
    )
    print(
        f"longest stream in steady state: {max(max(s.stream_lengths.values()) for s in steady)} entries; "
        f"keys {min(s.keys for s in steady)}-{max(s.keys for s in steady)}"
    )


if __name__ == "__main__":
    main()
