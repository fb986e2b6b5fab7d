"""Fault injection (issue 4): during a run of objects, kill or cut off one part of the system, then check that
nothing was lost, nothing is stuck, nothing was done twice, every state history is legal, the cap held and no
service died. Each test prints its row of the table (`var/fault-report.txt`, and the terminal summary)."""

import asyncio
import random
import time

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from libs.common.events.streams import (
    DATA_FIELD,
    DEAD_LETTERS,
    OBJECT_COMMANDS,
    OBJECT_EVENTS,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
)
from tests.e2e.client import read_sse
from tests.faults.harness import Scenario, System, read_stream

pytestmark = pytest.mark.timeout(360)

STREAMS = (OBJECT_COMMANDS, OPERATION_COMMANDS, OPERATION_RESULTS, OBJECT_EVENTS)


async def test_baseline_without_a_fault(system: System) -> None:
    """The control: the same load and checks with nothing injected, plus one object whose validation runs longer
    than CLAIM_IDLE_MS (its executor's heartbeats alone must keep it from being taken over and run twice)."""
    async with Scenario(system, "none (baseline, one long operation)", objects=40, long_objects=1) as run:
        await run.finish()


async def test_executor_killed_mid_operation(system: System) -> None:
    async with Scenario(system, "executor kill -9 mid-operation (x3)", objects=60, interval=0.3) as run:
        for n in range(3):
            victim = await run.running_operation(big=True)
            async with run.fault(f"kill {victim.executor} #{n + 1}"):
                system.kill(victim.executor)
                run.interrupted(victim)
                run.notes.append(f"killed {victim.executor} while it ran {victim.operation} of {victim.identifier}")
                await asyncio.sleep(1.0)
                system.respawn(victim.executor)
            await system.wait_healthy(victim.executor)
        await run.finish()


async def test_orchestrator_killed(system: System) -> None:
    async with Scenario(system, "orchestrator kill -9", objects=48, interval=0.25) as run:
        await run.wait_until_processing(3)
        await asyncio.sleep(1.5)
        async with run.fault("kill orchestrator-1"):
            system.kill("orchestrator-1")
            await asyncio.sleep(1.0)
            system.respawn("orchestrator-1")
        await system.wait_healthy("orchestrator-1")
        await run.finish()


async def test_redis_restarted_empty(system: System) -> None:
    async with Scenario(system, "Redis restarted without its data", objects=48, interval=0.25) as run:
        await run.wait_until_processing(3)
        await asyncio.sleep(2.0)
        async with run.fault("Redis kill -9 + restart empty"):
            await asyncio.to_thread(system.redis.restart_empty)
        await run.finish()


async def test_postgres_restarted(system: System) -> None:
    async with Scenario(system, "PostgreSQL restarted", objects=48, interval=0.25) as run:
        await run.wait_until_processing(3)
        await asyncio.sleep(2.0)
        async with run.fault("PostgreSQL stop -m immediate, 3 s down, start"):
            await asyncio.to_thread(system.postgres.stop, "immediate")
            await asyncio.sleep(3.0)
            await asyncio.to_thread(system.postgres.start)
        await run.finish()


async def test_s3_unreachable_for_20_seconds(system: System) -> None:
    async with Scenario(system, "S3 unreachable for 20 s", objects=48, interval=0.4) as run:
        await run.wait_until_processing(3)
        await asyncio.sleep(1.0)
        async with run.fault("S3 refused for 20 s"):
            await asyncio.to_thread(system.proxy.block)
            await asyncio.sleep(20.0)
            await asyncio.to_thread(system.proxy.unblock)
        await run.finish()


MALFORMED: tuple[dict[str, bytes], ...] = (
    {DATA_FIELD: b"\x00\xffnot json at all"},
    {DATA_FIELD: b"{}"},
    {DATA_FIELD: b"[1, 2, 3]"},
    {DATA_FIELD: b'{"type": "operation.run.v1", "object_id": "not-a-uuid"}'},
    {DATA_FIELD: b'{"type": "object.submit.v1", "identifier": 42}'},
    {DATA_FIELD: b'{"type": "operation.completed.v1", "object_id": null, "seq": -1}'},
    {DATA_FIELD: b'{"type": "object.progressed.v1", "seq": "x"}'},
    {DATA_FIELD: b'{"unterminated": '},
    {DATA_FIELD: b"null"},
    {"something": b"else"},
)


async def test_duplicate_and_malformed_messages(system: System) -> None:
    counts = {"duplicates": 0, "malformed": 0}
    redis = system.redis_client()

    async def inject() -> None:
        # Copies of the newest entries (work in flight: a duplicated run command while the original runs) and of
        # old ones (work long done), and garbage, on every stream.
        for stream in STREAMS:
            newest = await read_stream(redis, stream, newest=True, count=4)
            oldest = await read_stream(redis, stream, count=50)
            picked = [*newest, *random.sample(oldest, min(2, len(oldest)))]
            for _, fields in picked:
                if DATA_FIELD.encode() in fields:
                    await redis.xadd(stream, {DATA_FIELD: fields[DATA_FIELD.encode()]})
                    counts["duplicates"] += 1
            await redis.xadd(stream, random.choice(MALFORMED))  # type: ignore[arg-type]  # noqa: S311 - not crypto
            counts["malformed"] += 1

    try:
        async with Scenario(system, "duplicate + malformed messages", objects=48, interval=0.25) as run:
            await run.wait_until_processing(3)
            async with run.fault("inject for 10 s"):
                # For certain, and not only by chance: the command of an operation that is running right now, twice.
                for _ in range(2):
                    running = await run.running_operation(big=True)
                    entries = await read_stream(redis, OPERATION_COMMANDS, at=running.entry_id)
                    await redis.xadd(OPERATION_COMMANDS, {DATA_FIELD: entries[0][1][DATA_FIELD.encode()]})
                    counts["duplicates"] += 1
                    run.notes.append(f"duplicated {running.operation} of {running.identifier} while it ran")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    await inject()
                    await asyncio.sleep(0.3)
            run.notes.append(
                f"injected {counts['duplicates']} duplicates and {counts['malformed']} malformed entries "
                f"over {', '.join(STREAMS)}"
            )
            run.notes.append(await _dead_letters(redis))
            await run.finish()
        # The progress service read every one of them too: its SSE stream still serves a finished object.
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as api:
            identifier = f"{run.prefix}-probe"
            found = await api.get(f"/api/v1/objects/{identifier}")
            status, events = await read_sse(api, found.json()["id"], timeout=20)
        assert status == 200, f"SSE answered {status} after the injection"
        assert events, "SSE sent nothing after the injection"
        assert events[-1].data["state"] == "completed", events[-1].data
    finally:
        await redis.aclose()


async def _dead_letters(redis: Redis) -> str:
    letters = await read_stream(redis, DEAD_LETTERS, count=10_000)
    streams: dict[str, int] = {}
    for _, fields in letters:
        try:
            stream = str(orjson.loads(fields[DATA_FIELD.encode()]).get("stream"))
        except (KeyError, ValueError):
            stream = "?"
        streams[stream] = streams.get(stream, 0) + 1
    return "dead-lettered so far: " + (", ".join(f"{n} from {s}" for s, n in sorted(streams.items())) or "none")
