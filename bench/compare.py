"""Issue 6's benchmark: our pipeline against Celery and dramatiq doing the same work, in one run.

    .venv/bin/python -m bench.compare [--objects 1000] [--cap 3] [--raised-cap 32] [--raised-executors 8]
        [--peers celery_chain,celery_object,dramatiq_object] [--json var/bench.json]

It needs PostgreSQL (--database-url, a server it may create databases on); it starts everything else itself: a
Redis server of its own (unless --redis-url names one: it uses that database index and the ones below it,
flushing each), a moto S3 server, our
services (deploy.local.stack), each peer's workers. Every system gets the same work: N objects of
bench.pipeline's RECORDS with validate, transform, analyze, each operation writing its artifact to S3 and its
progress to a PostgreSQL row. For each it measures a burst of N (submissions/s, completed objects/s from the
first submission to the last completion, submit->completed p50/p95/p99) after a few objects of warm-up, then
the latency of single objects sent alone, and the CPU seconds per object of every process of the system and of
the S3 server (from /proc, process trees included). Then: moto's PUT ceiling, our pipeline at a raised cap with
more executors, the gateway's submit path at a fixed offered load and its ceiling, and SSE fan-out on the
progress service. It prints a table with ratios ours/peer and writes everything to --json.
"""

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis
from sqlalchemy.engine import make_url

from bench import _probes
from bench.peers.common import CREATE_TABLE, INSERT
from bench.pipeline import RECORDS, THREE
from deploy.local import s3_server
from deploy.local.stack import Stack, StackSettings, free_port, listen_ports
from libs.common.settings import S3Settings

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("celery_chain", "celery_object", "dramatiq_object")
TERMINAL = ("completed", "failed", "cancelled")
PACKAGES = (
    "faststream",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "aiobotocore",
    "boto3",
    "botocore",
    "moto",
    "celery",
    "kombu",
    "dramatiq",
    "httpx",
    "python-statemachine",
)


@dataclass
class Options:
    objects: int
    singles: int
    cap: int
    executors: int
    raised_cap: int
    raised_executors: int
    peers: list[str]
    database_url: str
    redis_url: str | None
    offered_rate: float
    offered_seconds: float
    ceiling_seconds: float
    put_seconds: float
    sse_subscribers: int
    json_path: Path
    log_dir: Path


@dataclass
class Run:
    """Where a system keeps its objects, and how to submit one and read back when each finished."""

    name: str
    dsn: str
    submit: Callable[[], Awaitable[str]]
    finished_query: str
    cpu_groups: dict[str, list[int]]
    figures: dict[str, Any] = field(default_factory=dict)


# --- infrastructure --------------------------------------------------------------------------------


def _dsn(url: str, database: str) -> str:
    """An asyncpg DSN for `database` on the server of `url` (a SQLAlchemy or libpq URL)."""
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _sqlalchemy_url(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg", database=database).render_as_string(hide_password=False)


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(_dsn(url, make_url(url).database or "postgres"))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


class RedisDatabases:
    """Hands out database indexes counting down from the configured one, flushing each before use."""

    def __init__(self, url: str) -> None:
        self._base = urlsplit(url)
        self._next = int(self._base.path.lstrip("/") or 0)

    def take(self) -> str:
        url = urlunsplit(self._base._replace(path=f"/{self._next % 16}"))
        self._next -= 1
        redis.Redis.from_url(url).flushdb()
        return url


def _start_redis(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway Redis (nothing on disk), so the benchmark never flushes anyone's data."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/15"
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = _start_server(
        argv, log_dir / "redis.log", lambda: redis.Redis.from_url(url).ping(), redis.ConnectionError
    )
    return process, url


def _start_moto(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = _start_server(
        s3_server.command("127.0.0.1", port),
        log_dir / "moto.log",
        lambda: httpx.get(f"{endpoint}/moto-api/", timeout=1),
        httpx.TransportError,
    )
    return process, endpoint


def _start_server(
    argv: list[str], log_path: Path, probe: Callable[[], object], not_yet: type[Exception]
) -> subprocess.Popen[bytes]:
    """Start a server in a process group of its own and wait until `probe` stops raising `not_yet`."""
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            probe()
            return process
        except not_yet:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{Path(argv[0]).name} did not start (log: {log_path})") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group we started it in, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


# --- the common measurement -------------------------------------------------------------------------


async def _wait_finished(db: Any, query: str, ids: list[uuid.UUID], deadline_s: float) -> list[tuple[str, float]]:
    """Polls until every object is terminal; returns (state, finished epoch seconds) per object."""
    deadline = time.monotonic() + deadline_s
    while True:
        rows = await db.fetch(query.format(ids="$1"), ids)
        if len(rows) == len(ids):
            return [(r["state"], float(r["finished"])) for r in rows]
        if time.monotonic() > deadline:
            msg = f"{len(ids) - len(rows)} of {len(ids)} objects did not finish within {deadline_s:.0f} s"
            raise TimeoutError(msg)
        await asyncio.sleep(0.05 if len(ids) > 1 else 0.003)


async def _burst(run: Run, db: Any, count: int, concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    submitted: dict[uuid.UUID, float] = {}

    async def one() -> None:
        async with gate:
            at = time.time()
            object_id = uuid.UUID(await run.submit())
            submitted[object_id] = at

    first = time.time()
    await asyncio.gather(*(one() for _ in range(count)))
    submit_seconds = time.time() - first
    ids = list(submitted)
    rows = await _wait_finished(db, run.finished_query, ids, 120 + count * 0.5)
    states = [s for s, _ in rows]
    finished = [f for _, f in rows]
    latencies = [f - submitted[i] for (_, f), i in zip(rows, ids, strict=True)]
    makespan = max(finished) - first
    return {
        "objects": count,
        "failed": sum(s != "completed" for s in states),
        "submit_seconds": submit_seconds,
        "submissions_per_s": count / submit_seconds,
        "makespan_seconds": makespan,
        "objects_per_s": count / makespan,
        "latency_p50_s": _probes.percentile(latencies, 50),
        "latency_p95_s": _probes.percentile(latencies, 95),
        "latency_p99_s": _probes.percentile(latencies, 99),
    }


async def _singles(run: Run, db: Any, count: int) -> dict[str, Any]:
    latencies = []
    for _ in range(count):
        at = time.time()
        object_id = uuid.UUID(await run.submit())
        ((state, finished),) = await _wait_finished(db, run.finished_query, [object_id], 60)
        if state != "completed":
            raise RuntimeError(f"{run.name}: a single object ended {state}")
        latencies.append(finished - at)
    ms = [x * 1000 for x in latencies]
    return {"runs": count, "p50_ms": _probes.percentile(ms, 50), "min_ms": min(ms), "max_ms": max(ms)}


async def measure(run: Run, options: Options, s3_pid: int, warmup: int, concurrency: int, singles: bool) -> None:
    db = await asyncpg.connect(run.dsn)
    try:
        await _burst(run, db, warmup, concurrency)  # workers connect, caches fill, code paths are imported
        if singles:
            run.figures["single"] = await _singles(run, db, options.singles)
        groups = {**run.cpu_groups, "s3": [s3_pid]}
        before = _probes.cpu_seconds(groups)
        run.figures["load_average_before"] = _probes.load_average()
        run.figures.update(await _burst(run, db, options.objects, concurrency))
        after = _probes.cpu_seconds(groups)
        run.figures["load_average_after"] = _probes.load_average()
        per_object = {k: (after[k] - before[k]) / options.objects * 1000 for k in groups}
        run.figures["cpu_ms_per_object"] = per_object
        run.figures["cpu_ms_per_object_system"] = sum(v for k, v in per_object.items() if k != "s3")
    finally:
        await db.close()


# --- our system ---------------------------------------------------------------------------------------


OURS_FINISHED = (
    "SELECT id, state, extract(epoch FROM finished_at) AS finished FROM processing_object "
    "WHERE id = ANY({ids}::uuid[]) AND state IN ('completed', 'failed', 'cancelled')"
)


def _start_stack(
    options: Options, name: str, database: str, endpoint: str, redis_url: str, cap: int, executors: int
) -> Stack:
    database_url = _sqlalchemy_url(options.database_url, database)
    bucket = f"bench-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    extra = {
        "MAX_PARALLEL_WORKERS": str(cap),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "console",
        # As `make run` does: the peers have no authentication or rate limits either, and a limit would cap the load.
        "AUTH_ENABLED": "false",
        "RATE_LIMIT_PER_MINUTE": "0",
        "RATE_LIMIT_ANONYMOUS_PER_MINUTE": "0",
        "MAX_STREAMS_PER_KEY": "0",  # the fan-out holds thousands of streams from one client
    }
    for attempt in (1, 2):
        ports = listen_ports(3 + executors)
        settings = StackSettings(
            database_url=database_url,
            redis_url=redis_url,
            s3_endpoint_url=endpoint,
            s3_bucket=bucket,
            gateway_port=ports[0],
            orchestrator_port=ports[1],
            progress_port=ports[2],
            executor_base_port=ports[3],
            executors=executors,
        )
        stack = Stack(settings, extra_env=extra, log_dir=options.log_dir / name)
        try:
            stack.start(timeout=120)
        except RuntimeError as exc:
            # A port picked free can be taken by someone else before the service binds it (a shared machine).
            if attempt == 2:
                raise
            _say(f"{name}: {exc}; once more, on other ports")
            continue
        return stack
    raise AssertionError  # unreachable: the loop returns or raises


def _stack_groups(stack: Stack) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for process in stack.processes:
        group = process.name.split("-")[0]
        groups.setdefault(group, []).append(process.popen.pid)
    return groups


@contextlib.asynccontextmanager
async def ours(options: Options, name: str, endpoint: str, redis_url: str, cap: int, executors: int) -> Any:
    database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    try:
        stack = await asyncio.to_thread(_start_stack, options, name, database, endpoint, redis_url, cap, executors)
    except BaseException:
        await _admin(options.database_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        raise
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60, limits=limits) as client:

            async def post(body: dict[str, Any]) -> httpx.Response:
                for _ in range(3):
                    try:
                        return await client.post("/api/v1/process", json=body)
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        # A kept-alive connection the server closed as it was reused (its idle timeout): the
                        # request never reached the handler, and the same identifier again is safe anyway.
                        run.figures["submit_reconnects"] = run.figures.get("submit_reconnects", 0) + 1
                return await client.post("/api/v1/process", json=body)

            async def submit() -> str:
                body = {"identifier": f"bench-{uuid.uuid4().hex}", "operations": THREE, "payload": RECORDS}
                response = await post(body)
                for _ in range(20):
                    if response.status_code != 503:
                        break
                    # As the README tells clients: the command stays queued; the same request again is safe.
                    run.figures["submit_503s"] = run.figures.get("submit_503s", 0) + 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    response = await post(body)
                response.raise_for_status()
                return str(response.json()["id"])

            run = Run(name, _dsn(options.database_url, database), submit, OURS_FINISHED, _stack_groups(stack))
            yield stack, client, run
    finally:
        await asyncio.to_thread(stack.stop)
        await _admin(options.database_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# --- peers ------------------------------------------------------------------------------------------

PEER_FINISHED = (
    "SELECT id, state, extract(epoch FROM finished_at) AS finished FROM peer_object "
    "WHERE id = ANY({ids}::uuid[]) AND state IN ('completed', 'failed', 'cancelled')"
)


def _spawn(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """In a session of its own, so that stopping it reaches every process it forks, and nothing else."""
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.asynccontextmanager
async def peer(options: Options, name: str, peer_dsn: str, endpoint: str, redis_url: str) -> Any:
    bucket = f"bench-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    settings = S3Settings(s3_endpoint_url=endpoint, s3_bucket=bucket)
    from libs.common.s3 import s3_client

    async with s3_client(settings) as client:
        await client.create_bucket(Bucket=bucket)
    env = {
        **os.environ,
        "BENCH_PEER_DATABASE_URL": peer_dsn,
        "BENCH_PEER_REDIS_URL": redis_url,
        "BENCH_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ["BENCH_PEER_REDIS_URL"] = redis_url  # read when the module below builds its broker client
    module: ModuleType = importlib.reload(importlib.import_module(f"bench.peers.{name}"))
    log = (options.log_dir / f"{name}.log").open("ab")
    workers = _spawn([str(Path(sys.executable).with_name(module.COMMAND)), *module.worker_argv(options.cap)], env, log)
    db = await asyncpg.connect(peer_dsn)
    try:

        async def submit() -> str:
            object_id = uuid.uuid4()
            identifier = f"bench-{object_id.hex}"
            await db.execute(INSERT, object_id, name, identifier)
            module.enqueue(str(object_id), identifier, THREE, RECORDS)
            return str(object_id)

        yield Run(name, peer_dsn, submit, PEER_FINISHED, {"workers": [workers.pid]})
    finally:
        await db.close()
        await asyncio.to_thread(_stop, workers)
        log.close()


# --- our submit path and fan-out ----------------------------------------------------------------------


def _signal_executors(stack: Stack, signum: signal.Signals) -> None:
    for process in stack.processes:
        if process.name.startswith("executor") and process.popen.poll() is None:
            os.kill(process.popen.pid, signum)


async def _wait_state(client: httpx.AsyncClient, object_id: str, states: tuple[str, ...], within: float) -> None:
    deadline = time.monotonic() + within
    while (await client.get(f"/api/v1/progress/{object_id}")).json()["state"] not in states:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{object_id} did not reach {states}")
        await asyncio.sleep(0.05)


async def sse_fan_out(stack: Stack, client: httpx.AsyncClient, run: Run, subscribers: int) -> dict[str, Any]:
    """Holds `subscribers` streams of one queued object, then cancels it: one event, to every one of them.

    The executors are stopped (SIGSTOP) so that `cap` objects hold every slot and the watched object stays
    queued until we cancel it; they are resumed afterwards.
    """
    _signal_executors(stack, signal.SIGSTOP)
    for _ in range(int(stack.extra_env.get("MAX_PARALLEL_WORKERS", "3"))):
        await _wait_state(client, await run.submit(), ("processing",), 30)
    watched = await run.submit()
    await _wait_state(client, watched, ("queued",), 30)
    progress = stack.process("progress").popen.pid
    rss_before = _probes.rss_bytes(progress)
    start = time.perf_counter()
    port = stack.settings.progress_port
    connected, errors = await _probes.fan_out("127.0.0.1", port, watched, subscribers)
    connect_seconds = time.perf_counter() - start
    await asyncio.sleep(1)  # let the service settle: buffers allocated for the first sends
    rss_after = _probes.rss_bytes(progress)
    delivery = _probes.Delivery(connected, wait_seconds=60)
    try:
        await delivery.ready()
        triggered = time.perf_counter()
        response = await client.post(f"/api/v1/objects/{watched}/cancel")
        response.raise_for_status()
        delivered = await delivery.result(triggered)
    finally:
        delivery.cancel()
        _probes.close_all(connected)
    return {
        "subscribers": subscribers,
        "held": len(connected),
        "connect_errors": len(errors),
        "connect_seconds": connect_seconds,
        "rss_before_mb": rss_before / 1e6,
        "rss_after_mb": rss_after / 1e6,
        "rss_kb_per_subscriber": (rss_after - rss_before) / max(1, len(connected)) / 1000,
        **delivered,
    }


async def _quiet(groups: dict[str, list[int]], below_cores: float = 0.1, within: float = 60) -> float:
    """Wait until these processes together use less than `below_cores` of CPU over a second (at most `within`
    seconds), so that what ran before does not weigh on the next measurement. Returns the seconds waited."""
    start = time.monotonic()
    before = sum(_probes.cpu_seconds(groups).values())
    while time.monotonic() - start < within:
        await asyncio.sleep(1)
        now = sum(_probes.cpu_seconds(groups).values())
        if now - before < below_cores:
            break
        before = now
    return time.monotonic() - start


# --- report -----------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


def _machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        ram_kb = int(f.readline().split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(ram_kb / 1e6, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _table(report: dict[str, Any]) -> Iterator[str]:
    machine = report["machine"]
    yield f"machine: {machine['cores']} cores, {machine['cpu_model']}, {machine['ram_gb']} GB RAM, Python {machine['python']}"
    yield "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    yield f"load average at start: {report['load_average_start']}, at end: {report['load_average_end']}"
    yield f"{report['objects']} objects x {'/'.join(THREE)}, cap {report['cap']}; S3: moto; latencies submit->completed"
    yield ""
    header = (
        f"{'system':<22}{'subm/s':>8}{'obj/s':>8}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}"
        f"{'alone p50':>11}{'CPU ms/obj':>12}{'S3 CPU ms/obj':>15}  load before"
    )
    yield header
    yield "-" * len(header)
    for name, f in report["systems"].items():
        single = f.get("single", {}).get("p50_ms", float("nan"))
        yield (
            f"{name:<22}{f['submissions_per_s']:>8.0f}{f['objects_per_s']:>8.1f}{f['latency_p50_s']:>8.2f}"
            f"{f['latency_p95_s']:>8.2f}{f['latency_p99_s']:>8.2f}{single:>9.0f}ms{f['cpu_ms_per_object_system']:>12.1f}"
            f"{f['cpu_ms_per_object']['s3']:>15.1f}  {f['load_average_before'][0]:.2f}"
        )
    yield ""
    yield "CPU ms per object by process group: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in f["cpu_ms_per_object"].items())
        for name, f in report["systems"].items()
    )
    if retried := {name: f["submit_503s"] for name, f in report["systems"].items() if f.get("submit_503s")}:
        yield "submissions answered 503 and sent again (the README's advice): " + ", ".join(
            f"{name} {count}" for name, count in retried.items()
        )
    if report["ratios"]:
        yield ""
        yield f"{'ours / peer':<22}{'obj/s':>8}{'p50 lat':>9}{'alone p50':>11}{'CPU/obj':>9}"
        for name, r in report["ratios"].items():
            yield f"{name:<22}{r['objects_per_s']:>8.2f}{r['latency_p50']:>9.2f}{r['single_p50']:>11.2f}{r['cpu_per_object']:>9.2f}"
    s3 = report["s3_put_ceiling"]
    yield ""
    yield f"moto PUT ceiling: {s3['puts_per_s']:.0f} PUT/s (2 KB, {s3['clients']} clients)"
    if (raised := report.get("raised")) and "error" in raised:
        yield f"raised: failed: {raised['error']}"
    elif raised:
        yield (
            f"ours at cap {report['raised_cap']} with {report['raised_executors']} executors: "
            f"{raised['objects_per_s']:.1f} obj/s, p50 {raised['latency_p50_s']:.2f} s, CPU {raised['cpu_ms_per_object_system']:.1f} ms/obj; "
            f"bound (PUT ceiling / 3 artifacts) {report['s3_bound_objects_per_s']:.1f} obj/s -> "
            f"{raised['objects_per_s'] / report['s3_bound_objects_per_s']:.0%} of it"
        )
    if (submit := report.get("submit_path")) and "error" in submit:
        yield f"submit_path: failed: {submit['error']}"
    elif submit:
        paced, top = submit["offered"], submit["ceiling"]
        yield (
            f"submit path at {paced['offered_per_s']:.0f}/s offered: {paced['accepted_per_s']:.0f}/s accepted, "
            f"p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms, {paced['errors']} errors; "
            f"ceiling ({top['concurrency']} clients): {top['accepted_per_s']:.0f}/s, p50 {top['p50_ms']:.1f} ms, p99 {top['p99_ms']:.1f} ms"
            + (
                f" (after {quiet:.0f} s for the fan-out's streams to close)"
                if (quiet := report.get("quiet_seconds_before_submit_path"))
                else ""
            )
        )
    if (sse := report.get("sse")) and "error" in sse:
        yield f"sse: failed: {sse['error']}"
    elif sse:
        yield (
            f"SSE fan-out: {sse['held']}/{sse['subscribers']} subscribers held (connected in {sse['connect_seconds']:.1f} s), "
            f"one event reached {sse['received']} of them, all within {sse['all_ms']:.0f} ms (p50 {sse['p50_ms']:.0f} ms); "
            f"progress RSS {sse['rss_before_mb']:.0f} -> {sse['rss_after_mb']:.0f} MB, {sse['rss_kb_per_subscriber']:.1f} KB per subscriber"
        )


def _ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    us = systems.get("ours")
    if us is None:
        return {}
    return {
        name: {
            "objects_per_s": _ratio(us["objects_per_s"], f["objects_per_s"]),
            "latency_p50": _ratio(us["latency_p50_s"], f["latency_p50_s"]),
            "single_p50": _ratio(us["single"]["p50_ms"], f["single"]["p50_ms"]),
            "cpu_per_object": _ratio(us["cpu_ms_per_object_system"], f["cpu_ms_per_object_system"]),
        }
        for name, f in systems.items()
        if name != "ours"
    }


# --- the run ----------------------------------------------------------------------------------------


async def run_all(options: Options) -> dict[str, Any]:
    options.log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": _machine(),
        "versions": _versions(),
        "load_average_start": _probes.load_average(),
        "objects": options.objects,
        "cap": options.cap,
        "executors": options.executors,
        "raised_cap": options.raised_cap,
        "raised_executors": options.raised_executors,
        "systems": {},
    }
    redis_server, redis_url = (None, options.redis_url) if options.redis_url else _start_redis(options.log_dir)
    databases = RedisDatabases(redis_url)
    peer_db = f"bench_peers_{uuid.uuid4().hex[:8]}"
    moto, endpoint = _start_moto(options.log_dir)
    warmup = 2 * options.cap
    try:
        bucket = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
        settings = S3Settings(s3_endpoint_url=endpoint, s3_bucket=bucket)
        from libs.common.s3 import s3_client

        async with s3_client(settings) as client:
            await client.create_bucket(Bucket=bucket)
        _say(f"moto PUT ceiling ({options.put_seconds:g} s)")
        report["s3_put_ceiling"] = await _probes.s3_put_ceiling(settings, options.put_seconds)
        report["s3_bound_objects_per_s"] = report["s3_put_ceiling"]["puts_per_s"] / 3

        _say(f"ours, cap {options.cap}, {options.executors} executors")
        async with ours(options, "ours", endpoint, databases.take(), options.cap, options.executors) as (
            stack,
            client,
            run,
        ):
            await measure(run, options, moto.pid, warmup, 64, singles=True)
            report["systems"]["ours"] = run.figures
            _say(f"SSE fan-out, {options.sse_subscribers} subscribers")
            try:
                report["sse"] = await sse_fan_out(stack, client, run, options.sse_subscribers)
            except Exception as exc:  # noqa: BLE001 - one failed probe must not lose the rest of the run
                report["sse"] = {"error": f"{type(exc).__name__}: {exc}"}
            # Closing ten thousand streams keeps the progress service (and the kernel) busy for a while after.
            if "error" not in report["sse"]:
                report["quiet_seconds_before_submit_path"] = await _quiet(_stack_groups(stack))
            _say(f"submit path: {options.offered_rate:g}/s offered for {options.offered_seconds:g} s, then the ceiling")
            try:
                offered = await _probes.offered_load(stack.base_url, options.offered_rate, options.offered_seconds)
                top = await _probes.ceiling(stack.base_url, options.ceiling_seconds)
                report["submit_path"] = {
                    "offered": offered,
                    "ceiling": top,
                    "note": "executors paused: submission only",
                }
            except Exception as exc:  # noqa: BLE001 - one failed probe must not lose the rest of the run
                report["submit_path"] = {"error": f"{type(exc).__name__}: {exc}"}
            _signal_executors(stack, signal.SIGCONT)

        await _admin(options.database_url, f'CREATE DATABASE "{peer_db}"')
        peer_dsn = _dsn(options.database_url, peer_db)
        connection = await asyncpg.connect(peer_dsn)
        await connection.execute(CREATE_TABLE)
        await connection.close()
        for name in options.peers:
            _say(f"peer {name}, concurrency {options.cap}")
            async with peer(options, name, peer_dsn, endpoint, databases.take()) as run:
                await measure(run, options, moto.pid, warmup, 1, singles=True)
                report["systems"][name] = run.figures

        _say(f"ours, cap {options.raised_cap}, {options.raised_executors} executors")
        async with ours(
            options, "ours_raised", endpoint, databases.take(), options.raised_cap, options.raised_executors
        ) as (_, _, run):
            await measure(run, options, moto.pid, 2 * options.raised_cap, 64, singles=False)
            report["raised"] = run.figures
    finally:
        _stop(moto)
        if redis_server is not None:
            _stop(redis_server)
        await _admin(options.database_url, f'DROP DATABASE IF EXISTS "{peer_db}" WITH (FORCE)')
    report["ratios"] = _ratios(report["systems"])
    report["load_average_end"] = _probes.load_average()
    return report


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=1000, help="objects per burst")
    parser.add_argument("--singles", type=int, default=20, help="objects sent alone, one after another")
    parser.add_argument("--cap", type=int, default=3, help="our MAX_PARALLEL_WORKERS; peers' worker concurrency")
    parser.add_argument("--executors", type=int, default=3)
    parser.add_argument("--raised-cap", type=int, default=32)
    parser.add_argument("--raised-executors", type=int, default=8)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--redis-url", help="an existing Redis; uses this db index and those below, flushing each (default: starts one)"
    )
    parser.add_argument("--offered-rate", type=float, default=500.0, help="submit path: requests/s offered")
    parser.add_argument("--offered-seconds", type=float, default=10.0)
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--put-seconds", type=float, default=5.0, help="how long to measure moto's PUT ceiling")
    parser.add_argument("--sse-subscribers", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench.json")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var" / "bench-logs")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    # Every subscriber is a socket here and in the progress service (which inherits this limit).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    options = Options(
        objects=args.objects,
        singles=args.singles,
        cap=args.cap,
        executors=args.executors,
        raised_cap=args.raised_cap,
        raised_executors=args.raised_executors,
        peers=peers,
        database_url=args.database_url,
        redis_url=args.redis_url,
        offered_rate=args.offered_rate,
        offered_seconds=args.offered_seconds,
        ceiling_seconds=args.ceiling_seconds,
        put_seconds=args.put_seconds,
        sse_subscribers=args.sse_subscribers,
        json_path=args.json,
        log_dir=args.log_dir,
    )
    report = asyncio.run(run_all(options))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(_table(report)))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
