"""The measuring instruments of bench.compare: CPU time of process trees, the S3 server's PUT ceiling, the
gateway's submit path under load, and SSE fan-out on the progress service."""

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from bench.pipeline import RECORDS, THREE
from libs.common.s3 import s3_client
from libs.common.settings import S3Settings

_TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- CPU ------------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: user + system, plus that of its children already reaped)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()  # the command name may contain spaces and parentheses
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        table[int(entry)] = (int(fields[1]), ticks / _TICK)
    return table


def cpu_seconds(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of process trees (each root pid and all its descendants)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, float] = {}
    for name, roots in groups.items():
        seen: set[int] = set()
        stack = [p for p in roots if p in table]
        while stack:
            pid = stack.pop()
            if pid not in seen:
                seen.add(pid)
                stack.extend(children.get(pid, []))
        totals[name] = sum(table[p][1] for p in seen)
    return totals


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# --- S3 -------------------------------------------------------------------------------------------


async def s3_put_ceiling(settings: S3Settings, seconds: float, clients: int = 4) -> dict[str, float]:
    """PUTs/s of 2 KB objects from `clients` concurrent requesters, each with requests always in flight."""
    body = os.urandom(1024).hex().encode()  # 2 KB
    count = 0
    async with s3_client(settings, max_pool_connections=clients) as client:
        await client.put_object(Bucket=settings.s3_bucket, Key="ceiling/warm", Body=body)
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await client.put_object(Bucket=settings.s3_bucket, Key=f"ceiling/{uuid.uuid4().hex}", Body=body)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"puts": count, "seconds": elapsed, "puts_per_s": count / elapsed, "clients": clients}


# --- submit path ----------------------------------------------------------------------------------


def _request() -> dict[str, object]:
    return {"identifier": f"bench-{uuid.uuid4().hex}", "operations": THREE, "payload": RECORDS}


async def _post(client: aiohttp.ClientSession, latencies: list[float], errors: list[str]) -> None:
    start = time.perf_counter()
    try:
        async with client.post("/api/v1/process", json=_request()) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        errors.append(type(exc).__name__)
        return
    if status >= 300:
        errors.append(str(status))
        return
    latencies.append(time.perf_counter() - start)


def _summary(latencies: list[float], errors: list[str], elapsed: float) -> dict[str, object]:
    ms = [x * 1000 for x in latencies]
    return {
        "accepted": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": elapsed,
        "accepted_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=float("nan")),
    }


def _session(base_url: str, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def offered_load(base_url: str, rate: float, seconds: float) -> dict[str, object]:
    """Open loop: a request every 1/rate s whatever the answers, for `seconds`; latency of each from its send."""
    latencies: list[float] = []
    errors: list[str] = []
    total = max(1, round(rate * seconds))
    # aiohttp, not httpx: with thousands of requests waiting for a connection, httpcore's pool spends its time
    # re-scanning the queue (quadratic) and the load generator, not the server, becomes the bottleneck.
    async with _session(base_url, 512) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(client, latencies, errors)))
        sent = time.perf_counter() - start
        # Past its capacity the backlog would take minutes to drain: what is unanswered 10 s after the last send
        # is counted as such, and abandoned.
        _, unanswered = await asyncio.wait(tasks, timeout=10)
        for task in unanswered:
            task.cancel()
            errors.append("unanswered after 10 s")
        elapsed = time.perf_counter() - start
    summary = _summary(latencies, errors, elapsed)
    summary.update(offered_per_s=rate, sent_per_s=total / sent if sent else float(total))
    return summary


async def ceiling(base_url: str, seconds: float, concurrency: int = 32) -> dict[str, object]:
    """Closed loop: `concurrency` clients, each sending its next request as soon as the last is answered."""
    latencies: list[float] = []
    errors: list[str] = []
    async with _session(base_url, concurrency) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                await _post(client, latencies, errors)

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    summary = _summary(latencies, errors, elapsed)
    summary["concurrency"] = concurrency
    return summary


# --- SSE fan-out ----------------------------------------------------------------------------------


@dataclass
class _Subscriber:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buffer: bytes = b""
    events: int = 0

    async def wait_events(self, count: int) -> float:
        """Reads until `count` SSE events (data: fields) have arrived; returns when the last one did.

        Counting `data:` in the raw bytes is enough here: HTTP chunk-size lines are hex digits and never contain it.
        """
        while self.events < count:
            chunk = await self.reader.read(65536)
            if not chunk:
                msg = f"stream closed after {self.events} events"
                raise ConnectionError(msg)
            data = self.buffer + chunk
            self.events += data.count(b"data:")
            self.buffer = data[-4:]  # a "data:" split across reads is counted once, when its last byte arrives
        return time.perf_counter()


async def _subscribe(host: str, port: int, path: str) -> _Subscriber:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    subscriber = _Subscriber(reader, writer)
    await subscriber.wait_events(1)  # the current document, sent to every new subscriber
    return subscriber


async def fan_out(host: str, port: int, object_id: str, subscribers: int) -> tuple[list[_Subscriber], list[str]]:
    path = f"/api/v1/progress/{object_id}/stream"
    gate = asyncio.Semaphore(256)
    errors: list[str] = []
    connected: list[_Subscriber] = []

    async def one() -> None:
        async with gate:
            try:
                connected.append(await asyncio.wait_for(_subscribe(host, port, path), 120))
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(type(exc).__name__)

    await asyncio.gather(*(one() for _ in range(subscribers)))
    return connected, errors


class Delivery:
    """Every subscriber waiting for its next event, each recording when it arrived.

    The readers wait on their sockets before the event is triggered (`ready`), so an arrival is timed when the
    subscriber reads it, not when the measuring loop gets round to asking: with 10,000 sockets in one event
    loop, asking only after the trigger timed the loop's own backlog (even the first "arrival" came after 1.1 s).
    """

    def __init__(self, subscribers: list[_Subscriber], wait_seconds: float) -> None:
        self._count = len(subscribers)
        self._waiting = 0
        self._all_waiting = asyncio.Event()
        if not subscribers:
            self._all_waiting.set()
        self._arrivals = asyncio.ensure_future(asyncio.gather(*(self._one(s, wait_seconds) for s in subscribers)))

    async def _one(self, subscriber: _Subscriber, wait_seconds: float) -> float | None:
        self._waiting += 1
        if self._waiting == self._count:
            self._all_waiting.set()
        try:
            return await asyncio.wait_for(subscriber.wait_events(subscriber.events + 1), wait_seconds)
        except (TimeoutError, ConnectionError):
            return None

    async def ready(self) -> None:
        """Returns once every reader is waiting on its socket."""
        await self._all_waiting.wait()
        await asyncio.sleep(0.1)  # the last ones started: let their first reads reach the socket

    def cancel(self) -> None:
        self._arrivals.cancel()

    async def result(self, started: float) -> dict[str, object]:
        """Times from `started` (the trigger)."""
        got = [arrival - started for arrival in await self._arrivals if arrival is not None]
        return {
            "received": len(got),
            "all_ms": max(got) * 1000 if got else float("nan"),
            "p50_ms": statistics.median(got) * 1000 if got else float("nan"),
            "first_ms": min(got) * 1000 if got else float("nan"),
        }


def close_all(subscribers: list[_Subscriber]) -> None:
    for subscriber in subscribers:
        subscriber.writer.close()
