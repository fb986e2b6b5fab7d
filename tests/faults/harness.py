"""A run of objects through a live system, a fault in the middle of it, and the invariants checked afterwards.

    async with Scenario(system, "orchestrator kill -9") as run:
        await run.wait_until_busy()
        async with run.fault("kill"):
            ...                      # inject it
        row = await run.finish()     # waits for every object, checks everything, records the table row

Invariants (each violation is listed in the row and fails the test):
- every accepted object (2xx on POST, or an ambiguous POST whose object exists) exists at the end (not lost);
- every object of the run reaches a terminal state, with no stretch of the deadline without progress (not stuck), and, the data being valid,
  that state is `completed`;
- each completed operation has exactly one artifact `{identifier}/{op}_result.json` (one S3 version: it was
  written by one run), with status `succeeded`, this object's id and this object's run (task_id);
- each object's `object_transition` rows form a path the state machine allows, ending in its current state;
- at most MAX_PARALLEL_WORKERS objects were processing at any moment (`GET /api/v1/status` sampled every 20 ms,
  and the processing intervals replayed from `object_transition` in commit order);
- the gateway answered only 2xx or 503 with Retry-After (never a 500);
- no service process died (the ones killed on purpose were restarted and must be running).
"""

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.local.stack import Process, Stack
from libs.common.events.streams import EXECUTOR_GROUP, OPERATION_COMMANDS, RUN_DONE
from tests.e2e.s3 import s3
from tests.faults.proxy import TcpProxy
from tests.faults.report import Row, record
from tests.faults.servers import PostgresServer, RedisServer

TERMINAL = frozenset({"completed", "failed", "cancelled"})
ALLOWED_TRANSITIONS = frozenset(
    {
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "processing"),
        ("processing", "completed"),
        ("processing", "failed"),
        ("processing", "cancelled"),
        ("failed", "queued"),
        ("queued", "cancelled"),
        ("pending", "cancelled"),
    }
)
OPERATIONS = ["validate", "transform", "analyze"]
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0},
        "group": {"type": "string", "pattern": "^g[0-9]+$"},
        "value": {"type": "integer", "minimum": 0, "maximum": 1000},
        "note": {"type": "string"},
    },
    "required": ["id", "group", "value"],
}
BIG_OPTIONS: dict[str, Any] = {
    # CPU work per record, so that each operation on the large source runs for a second or more: long enough to be
    # interrupted in the middle.
    "validate": {"schema": RECORD_SCHEMA},
    "transform": {
        "steps": [
            {"op": "filter", "expression": "value >= `0` && contains(group, 'g')"},
            {"op": "normalize", "case": "upper"},
            {"op": "drop", "fields": ["note"]},
        ]
    },
}
LONG_OPTIONS: dict[str, Any] = {
    **BIG_OPTIONS,
    # The same schema thrice: a validation of the longest source that runs well past CLAIM_IDLE_MS (about 10 s).
    "validate": {"schema": {"allOf": [RECORD_SCHEMA] * 3}},
}
MAX_WORKERS = 3
POST_TIMEOUT = 20.0


# --- the system under test ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    big: str
    """s3:// URL of a few MB of NDJSON: operations on it take long enough to be interrupted."""
    long: str
    """s3:// URL of NDJSON whose validation outlasts CLAIM_IDLE_MS."""


@dataclass
class System:
    """One stack (every service its own process) over the suite's own PostgreSQL, Redis and S3 proxy."""

    name: str
    stack: Stack
    postgres: PostgresServer
    redis: RedisServer
    proxy: TcpProxy
    s3_endpoint: str
    """The S3 server itself, for the suite's checks (the services go through `proxy`)."""
    bucket: str
    sources: "Sources"
    database: str
    restarted: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.postgres.port}/{self.database}"

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        connection = await asyncpg.connect(self.dsn, timeout=5)
        try:
            rows: list[Any] = await connection.fetch(sql, *args, timeout=30)
            return rows
        finally:
            await connection.close()

    def kill(self, name: str) -> None:
        """SIGKILL, no warning: whatever the process was doing is cut off."""
        popen = self.stack.process(name).popen
        popen.kill()
        popen.wait(10)

    def respawn(self, name: str) -> Process:
        """Start `name` again exactly as the stack started it: same argv, same environment, same log file."""
        old = self.stack.process(name)
        if old.popen.poll() is None:
            msg = f"{name} is still running"
            raise RuntimeError(msg)
        port = urlsplit(old.health_url).port if old.health_url else None
        if port is None:
            msg = f"{name} has no port"
            raise RuntimeError(msg)
        env = self.stack._env(PORT=str(port), INSTANCE_ID=name)
        argv = [str(arg) for arg in old.popen.args]  # type: ignore[union-attr]
        index = self.stack.processes.index(old)
        self.stack._spawn(name, argv, old.health_url, env)
        new = self.stack.processes.pop()
        self.stack.processes[index] = new
        self.restarted.append(name)
        return new

    async def wait_healthy(self, name: str, timeout: float = 60.0) -> None:
        process = self.stack.process(name)
        assert process.health_url is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(process.health_url)).status_code < 300:
                        return
                if process.popen.poll() is not None:
                    msg = f"{name} exited with {process.popen.returncode} after a restart"
                    raise AssertionError(msg)
                if time.monotonic() > deadline:
                    msg = f"{name} not healthy {timeout}s after a restart"
                    raise AssertionError(msg)
                await asyncio.sleep(0.1)

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_timeout=5)


# --- what the run records ----------------------------------------------------------------------------------


@dataclass
class Submission:
    identifier: str
    kind: str
    """`obj` and `probe` (inline payload), `big` (the large source) or `long` (the source that takes longest)."""
    status: int | None = None
    """HTTP status, or None when the POST got no answer (timeout, connection error): ambiguous."""
    error: str | None = None
    retry_after: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class RunningOperation:
    executor: str
    entry_id: str
    identifier: str
    operation: str


@dataclass
class FaultMark:
    label: str
    started: float
    """Wall-clock time (time.time()), comparable with the `finished_at` the orchestrator writes."""
    in_flight: set[str]
    ended: float | None = None


class StatusSampler:
    """GET /api/v1/status every `interval` seconds; remembers the highest active_workers seen."""

    def __init__(self, base_url: str, interval: float = 0.02) -> None:
        self.base_url = base_url
        self.interval = interval
        self.samples = 0
        self.errors = 0
        self.max_active = 0
        self.over_cap: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while True:
                try:
                    response = await client.get("/api/v1/status")
                    if response.status_code == 200:
                        body = response.json()
                        active = int(body["active_workers"])
                        self.samples += 1
                        self.max_active = max(self.max_active, active)
                        if active > int(body["max_workers"]) or active > MAX_WORKERS:
                            self.over_cap.append(f"{time.strftime('%H:%M:%S')}: {active} active")
                    else:
                        self.errors += 1
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1
                await asyncio.sleep(self.interval)


# --- the scenario ------------------------------------------------------------------------------------------


def _small_payload(n: int) -> list[dict[str, Any]]:
    return [
        {"id": n * 100 + i, "Name": f" item {i} ", "group": f"g{i % 4}", "value": (n * 7 + i) % 97} for i in range(20)
    ]


class Scenario:
    def __init__(
        self,
        system: System,
        fault: str,
        *,
        objects: int = 48,
        big_every: int = 6,
        long_objects: int = 0,
        burst: int = 12,
        interval: float = 0.25,
        deadline: float = 50.0,
    ) -> None:
        self.system = system
        self.fault_name = fault
        self.objects = objects
        self.big_every = big_every
        self.long_objects = long_objects
        self.burst = burst
        self.interval = interval
        self.deadline = deadline
        self.prefix = f"{system.name}-{uuid.uuid4().hex[:6]}"
        self.submissions: list[Submission] = []
        self.marks: list[FaultMark] = []
        self.notes: list[str] = []
        self.sampler = StatusSampler(system.base_url)
        self.started = time.monotonic()
        self._submitter: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[Any]] = []
        self.probe_started: float | None = None
        self._picked: set[str] = set()
        self._interrupted: list[tuple[RunningOperation, float]] = []
        self.probe_done: float | None = None

    # --- lifecycle ---

    async def __aenter__(self) -> "Scenario":
        self.started = time.monotonic()
        self.sampler.start()
        self._submitter = asyncio.create_task(self._submit_all(), name="submitter")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks = [t for t in (self._submitter, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sampler.stop()

    def background(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        self._background.append(asyncio.create_task(coroutine, name=name))

    # --- load ---

    async def _submit_all(self) -> None:
        async with httpx.AsyncClient(base_url=self.system.base_url, timeout=POST_TIMEOUT) as client:
            pending: list[asyncio.Task[None]] = []
            for n in range(self.objects):
                if n < self.long_objects:
                    kind = "long"
                elif self.big_every > 0 and n % self.big_every == 1:
                    kind = "big"
                else:
                    kind = "obj"
                submission = Submission(f"{self.prefix}-{kind}-{n:04d}", kind)
                self.submissions.append(submission)
                pending.append(asyncio.create_task(self._submit(client, submission, n)))
                # A burst first, so that a queue builds up and the fault finds work waiting as well as running.
                await asyncio.sleep(0.03 if n < self.burst else self.interval)
            await asyncio.gather(*pending)

    def _body(self, submission: Submission, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {"identifier": submission.identifier, "operations": OPERATIONS}
        if submission.kind in ("obj", "probe"):
            body["payload"] = _small_payload(n)
        else:
            big = submission.kind == "big"
            body["source"] = self.system.sources.big if big else self.system.sources.long
            body["options"] = BIG_OPTIONS if big else LONG_OPTIONS
        return body

    async def _submit(self, client: httpx.AsyncClient, submission: Submission, n: int) -> None:
        clock = time.monotonic()
        try:
            response = await client.post("/api/v1/process", json=self._body(submission, n))
            submission.status = response.status_code
            submission.retry_after = response.headers.get("retry-after")
            if response.status_code >= 300:
                submission.error = response.text[:300]
        except httpx.HTTPError as exc:
            submission.error = f"{type(exc).__name__}: {exc}"
        submission.seconds = time.monotonic() - clock

    @property
    def submitting(self) -> bool:
        return self._submitter is not None and not self._submitter.done()

    # --- observation ---

    async def in_flight(self) -> set[str]:
        rows = await self.system.fetch(
            "SELECT identifier FROM processing_object WHERE identifier LIKE $1 AND state <> ALL($2::text[])",
            f"{self.prefix}-%",
            list(TERMINAL),
        )
        return {row["identifier"] for row in rows}

    async def wait_until_processing(self, count: int = 1, timeout: float = 30.0) -> None:
        """Until at least `count` objects of this run are processing (so that a fault hits work in progress)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.system.fetch(
                "SELECT count(*) AS n FROM processing_object WHERE identifier LIKE $1 AND state = 'processing'",
                f"{self.prefix}-%",
            )
            if rows[0]["n"] >= count:
                return
            await asyncio.sleep(0.1)
        msg = f"fewer than {count} objects processing after {timeout}s"
        raise AssertionError(msg)

    async def running_operation(self, big: bool = True, timeout: float = 20.0) -> RunningOperation:
        """An operation of this run that an executor has been running for at least 0.3 s (and that was not picked
        before).

        An executor reads one entry at a time and renews it while it runs (heartbeat), so an entry pending for a
        consumer with a small idle time is an operation that consumer is running right now."""
        redis = self.system.redis_client()
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                live: dict[str, str] = {}
                pending = await redis.xpending_range(OPERATION_COMMANDS, EXECUTOR_GROUP, min="-", max="+", count=100)
                for entry in pending:
                    entry_id = _text(entry["message_id"])
                    if int(entry["time_since_delivered"]) < 2_500 and entry_id not in self._picked:
                        live[entry_id] = _text(entry["consumer"])
                candidates: list[RunningOperation] = []
                for entry_id, consumer in live.items():
                    if seen.get(entry_id) != consumer:
                        continue
                    entries = await read_stream(redis, OPERATION_COMMANDS, at=entry_id)
                    if not entries or b"__data__" not in entries[0][1]:
                        continue
                    command = orjson.loads(entries[0][1][b"__data__"])
                    identifier = str(command.get("identifier", ""))
                    if identifier.startswith(self.prefix) and (
                        not big or "-big-" in identifier or "-long-" in identifier
                    ):
                        candidates.append(RunningOperation(consumer, entry_id, identifier, str(command["operation"])))
                if candidates:
                    picked = random.choice(candidates)  # noqa: S311 - not crypto
                    self._picked.add(picked.entry_id)
                    return picked
                seen = live
                await asyncio.sleep(0.3)
        finally:
            await redis.aclose()
        msg = f"no {'big ' if big else ''}operation running for {timeout}s"
        raise AssertionError(msg)

    def interrupted(self, operation: RunningOperation) -> None:
        """Remember that `operation` was cut off now: the report says when it was done again."""
        self._interrupted.append((operation, time.time()))

    @contextlib.asynccontextmanager
    async def fault(self, label: str) -> AsyncIterator[FaultMark]:
        """Marks the fault's start (and what was in flight then) and its end."""
        mark = FaultMark(label, time.time(), await self.in_flight())
        self.marks.append(mark)
        try:
            yield mark
        finally:
            mark.ended = time.time()
            self.notes.append(
                f"{label}: {len(mark.in_flight)} objects in flight, fault lasted {mark.ended - mark.started:.1f} s"
            )

    # --- the end ---

    async def _probe(self, deadline: float) -> None:
        """A fresh object after the fault: accepted (a client retries a 503) and completed."""
        identifier = f"{self.prefix}-probe"
        self.probe_started = time.time()
        async with httpx.AsyncClient(base_url=self.system.base_url, timeout=POST_TIMEOUT) as client:
            submission = Submission(identifier, "probe")
            self.submissions.append(submission)
            while time.monotonic() < deadline:
                await self._submit(client, submission, 0)
                if submission.status in (200, 202):
                    break
                await asyncio.sleep(1)
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"/api/v1/objects/{identifier}")
                    if response.status_code == 200 and response.json()["state"] in TERMINAL:
                        self.probe_done = time.time()
                        return
                await asyncio.sleep(0.2)

    async def _wait_terminal(self, deadline: float) -> set[str]:
        """Waits until every object of this run is terminal; returns the ones that are not at the deadline.

        The deadline moves while the run makes progress (an object's event number grows, or an executor holds an
        operation's running key): a slow machine makes a run slow, not stuck. It never moves past three times
        the original wait."""
        remaining: set[str] = set()
        hard_stop = deadline + 2 * self.deadline
        seen_seq = -1
        while time.monotonic() < min(deadline, hard_stop):
            try:
                remaining = await self.in_flight()
                seq, running = await self._progress()
            except (OSError, asyncpg.PostgresError, TimeoutError, RedisError):
                await asyncio.sleep(0.5)
                continue
            if not remaining:
                return remaining
            if seq != seen_seq or running:
                seen_seq = seq
                deadline = max(deadline, time.monotonic() + self.deadline)
            await asyncio.sleep(0.5)
        return remaining

    async def _progress(self) -> tuple[int, int]:
        """The sum of the run's event numbers (grows with every change) and how many operations an executor is
        running right now (holding their running keys, which expire if the executor dies)."""
        rows = await self.system.fetch(
            "SELECT coalesce(sum(event_seq), 0) AS seq FROM processing_object WHERE identifier LIKE $1",
            f"{self.prefix}-%",
        )
        redis = self.system.redis_client()
        try:
            running = [
                key
                async for key in redis.scan_iter(match="executor:running:*", count=1000)
                if await redis.get(key) not in (None, RUN_DONE)
            ]
        finally:
            await redis.aclose()
        return int(rows[0]["seq"]), len(running)

    async def finish(self) -> Row:
        if self._submitter is not None:
            await self._submitter
        # One deadline for everything after the run: the probe, then every other object.
        deadline = time.monotonic() + self.deadline
        await self._probe(deadline)
        await self._wait_terminal(deadline)
        await self.sampler.stop()
        row = await self._check()
        print()  # noqa: T201 - the table is the point of this suite; `pytest -s` shows it as it comes
        print(record(row))  # noqa: T201
        assert row.passed, f"{self.fault_name}: " + "; ".join(row.violations[:10])
        return row

    async def _check(self) -> Row:
        violations: list[str] = []
        objects = {
            row["identifier"]: row
            for row in await self.system.fetch(
                "SELECT id, identifier, state, operations, operations_status, error_message, task_id, finished_at"
                " FROM processing_object WHERE identifier LIKE $1",
                f"{self.prefix}-%",
            )
        }

        # Accepted, lost: 2xx, or no answer at all and the object exists (resolved by reading it back).
        accepted: list[str] = []
        answers: dict[str, int] = {}
        for submission in self.submissions:
            key = str(submission.status) if submission.status is not None else "no answer"
            answers[key] = answers.get(key, 0) + 1
            if submission.status in (200, 202) or (submission.status is None and submission.identifier in objects):
                accepted.append(submission.identifier)
            if submission.status is not None and submission.status not in (200, 202, 503):
                violations.append(f"POST {submission.identifier} answered {submission.status}: {submission.error}")
            if submission.status == 503 and not submission.retry_after:
                violations.append(f"POST {submission.identifier} answered 503 without Retry-After")
        lost = [identifier for identifier in accepted if identifier not in objects]
        violations.extend(f"lost: {identifier} was accepted and does not exist" for identifier in lost)
        self.notes.append("POST answers: " + ", ".join(f"{count}x {key}" for key, count in sorted(answers.items())))

        # Stuck, failed: every object of the run (accepted or not: a 503'd command may still be applied).
        stuck = [row for row in objects.values() if row["state"] not in TERMINAL]
        failed = [row for row in objects.values() if row["state"] != "completed" and row["state"] in TERMINAL]
        entries = await self._pending_commands({str(row["id"]) for row in stuck[:10]})
        if stuck:
            self._dump_stacks()
        for row in stuck[:10]:
            violations.append(
                f"stuck: {row['identifier']} still {row['state']} after {self.deadline:.0f}s without progress "
                f"({_summary(row['operations_status'])}; {entries.get(str(row['id']), 'no command pending')})"
            )
        for row in failed[:10]:
            violations.append(f"{row['state']} although its data is valid: {row['identifier']}: {row['error_message']}")

        # State histories and the cap, replayed in commit order.
        transitions = await self.system.fetch(
            "SELECT t.id, t.object_id, t.from_state, t.to_state, t.event FROM object_transition t ORDER BY t.id"
        )
        by_object: dict[Any, list[Any]] = {}
        processing = 0
        max_processing = 0
        for transition in transitions:
            by_object.setdefault(transition["object_id"], []).append(transition)
            if transition["to_state"] == "processing":
                processing += 1
            if transition["from_state"] == "processing":
                processing -= 1
            max_processing = max(max_processing, processing)
        if max_processing > MAX_WORKERS:
            violations.append(f"cap: {max_processing} objects processing at once (object_transition replay)")
        for row in objects.values():
            violations.extend(_path_violations(row, by_object.get(row["id"], [])))

        # The cap, sampled live.
        self.notes.append(
            f"status sampled {self.sampler.samples} times ({self.sampler.errors} errors), "
            f"max active_workers {self.sampler.max_active}; replayed max {max_processing}"
        )
        violations.extend(f"cap exceeded at {sample}" for sample in self.sampler.over_cap[:5])

        # Interrupted operations: when were they done after all?
        takeovers = []
        for operation, at in self._interrupted:
            row = objects.get(operation.identifier)
            done = _json(row["operations_status"]).get(operation.operation, {}) if row else {}
            if done.get("completed") and done.get("completed_at"):
                took = datetime.fromisoformat(str(done["completed_at"])).timestamp() - at
                takeovers.append(
                    f"{operation.operation} of {'-'.join(operation.identifier.rsplit('-', 2)[-2:])} {took:.1f} s"
                )
            else:
                takeovers.append(f"{operation.operation} of {operation.identifier} never")
        if takeovers:
            self.notes.append("interrupted operations completed after: " + ", ".join(takeovers))

        # Artifacts: one version each (one run wrote it), succeeded, this object's, this run's.
        duplicated, artifact_violations = await self._check_artifacts(objects)
        violations.extend(artifact_violations)

        # Service processes.
        for process in self.system.stack.processes:
            if process.popen.poll() is not None:
                violations.append(f"{process.name} died (exit code {process.popen.returncode})")
        if self.system.restarted:
            self.notes.append("killed and restarted: " + ", ".join(self.system.restarted))

        return Row(
            fault=self.fault_name,
            objects=len(accepted),
            lost=len(lost),
            stuck=len(stuck),
            duplicated=duplicated,
            failed=len(failed),
            recovery_seconds=self._recovery(objects),
            passed=not violations,
            violations=violations,
            notes=self.notes,
            seconds=time.monotonic() - self.started,
        )

    def _dump_stacks(self) -> None:
        """Where every service process is right now, when py-spy is at hand (PATH, or FAULTS_PY_SPY)."""
        py_spy = os.environ.get("FAULTS_PY_SPY") or shutil.which("py-spy")
        if not py_spy or self.system.stack.log_dir is None:
            return
        out = self.system.stack.log_dir / "stacks.txt"
        with out.open("a") as file:
            for process in self.system.stack.processes:
                dump = subprocess.run(
                    [py_spy, "dump", "--pid", str(process.popen.pid)], capture_output=True, text=True, check=False
                )
                file.write(f"===== {process.name} (pid {process.popen.pid})\n{dump.stdout}{dump.stderr}\n")
        self.notes.append(f"stacks of every service when objects were stuck: {out}")

    async def _pending_commands(self, object_ids: set[str]) -> dict[str, str]:
        """For stuck objects: their operation commands still pending in the executors' group, and with whom."""
        if not object_ids:
            return {}
        found: dict[str, list[str]] = {}
        redis = self.system.redis_client()
        try:
            pending = await redis.xpending_range(OPERATION_COMMANDS, EXECUTOR_GROUP, min="-", max="+", count=1000)
            for entry in pending:
                entry_id = _text(entry["message_id"])
                stored = await read_stream(redis, OPERATION_COMMANDS, at=entry_id)
                if not stored or b"__data__" not in stored[0][1]:
                    continue
                with contextlib.suppress(ValueError):
                    command = orjson.loads(stored[0][1][b"__data__"])
                    if str(command.get("object_id")) in object_ids:
                        found.setdefault(str(command["object_id"]), []).append(
                            f"{command.get('operation')} pending at {_text(entry['consumer'])}, idle "
                            f"{int(entry['time_since_delivered']) / 1000:.1f} s, delivered {int(entry['times_delivered'])}x"
                        )
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            return dict.fromkeys(object_ids, f"pending entries unknown ({type(exc).__name__})")
        finally:
            await redis.aclose()
        return {object_id: "; ".join(lines) for object_id, lines in found.items()}

    def _recovery(self, objects: dict[str, Any]) -> float | None:
        worst: float | None = None
        for mark in self.marks:
            if mark.in_flight:
                finished: list[datetime | None] = [
                    objects[identifier]["finished_at"] if identifier in objects else None
                    for identifier in mark.in_flight
                ]
                if any(at is None for at in finished):
                    return None
                end = max(at.timestamp() for at in finished if at is not None)
            elif self.probe_done is not None:
                end = self.probe_done
            else:
                return None
            took = max(0.0, end - mark.started)
            worst = took if worst is None else max(worst, took)
        return worst

    async def _check_artifacts(self, objects: dict[str, Any]) -> tuple[int, list[str]]:
        violations: list[str] = []
        version_ids: dict[str, list[str]] = {}
        async with s3(self.system.s3_endpoint, self.system.bucket) as client:
            paginator = client.get_paginator("list_object_versions")
            async for page in paginator.paginate(Bucket=self.system.bucket, Prefix=f"{self.prefix}-"):
                for version in page.get("Versions", []):
                    version_ids.setdefault(version["Key"], []).append(version.get("VersionId", ""))
            versions = {key: len(ids) for key, ids in version_ids.items()}
            duplicated = [key for key, count in versions.items() if key.endswith("_result.json") and count > 1]
            for key in duplicated[:10]:
                # Who wrote each version, when it started and how long it ran: overlapping runs show concurrency.
                runs = []
                for version_id in reversed(version_ids[key]):
                    response = await client.get_object(Bucket=self.system.bucket, Key=key, VersionId=version_id)
                    async with response["Body"] as body:
                        artifact = orjson.loads(await body.read())
                    started = str(artifact.get("started_at", ""))[11:22]
                    runs.append(
                        f"{artifact.get('executor_id')} from {started} for "
                        f"{float(artifact.get('duration_ms') or 0) / 1000:.1f} s ({artifact.get('status')})"
                    )
                violations.append(f"duplicated: {key} was written {versions[key]} times: {'; '.join(runs)}")
            gate = asyncio.Semaphore(16)
            big_durations: list[float] = []
            long_durations: list[str] = []

            async def check(row: Any, operation: str) -> str | None:
                key = f"{row['identifier']}/{operation}_result.json"
                if key not in versions:
                    return f"missing artifact: {key} of a completed operation"
                async with gate:
                    response = await client.get_object(Bucket=self.system.bucket, Key=key)
                    async with response["Body"] as body:
                        artifact = orjson.loads(await body.read())
                if isinstance(artifact.get("duration_ms"), int | float):
                    if "-big-" in key:
                        big_durations.append(float(artifact["duration_ms"]) / 1000)
                    elif "-long-" in key:
                        long_durations.append(f"{operation} {float(artifact['duration_ms']) / 1000:.1f} s")
                problems = []
                if artifact.get("status") != "succeeded":
                    problems.append(f"status {artifact.get('status')}")
                if artifact.get("object_id") != str(row["id"]):
                    problems.append(f"object_id {artifact.get('object_id')}")
                if artifact.get("task_id") != str(row["task_id"]):
                    problems.append(f"task_id {artifact.get('task_id')} (not this run's)")
                return f"artifact {key}: {', '.join(problems)}" if problems else None

            checks: list[Coroutine[Any, Any, str | None]] = []
            for row in objects.values():
                status = _json(row["operations_status"])
                for operation in row["operations"]:
                    done = bool(status.get(operation, {}).get("completed"))
                    if done:
                        checks.append(check(row, operation))
                    elif row["state"] == "completed":
                        violations.append(f"{row['identifier']} completed without completing {operation}")
            violations.extend(problem for problem in await asyncio.gather(*checks) if problem)
        if long_durations:
            self.notes.append(f"operations on the longest source took {', '.join(sorted(long_durations))}")
        if big_durations:
            big_durations.sort()
            self.notes.append(
                f"operations on the large source took {big_durations[0]:.2f}-{big_durations[-1]:.2f} s "
                f"(median {big_durations[len(big_durations) // 2]:.2f} s)"
            )
        return len(duplicated), violations


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        decoded: dict[str, Any] = orjson.loads(value)
        return decoded
    return dict(value or {})


def _summary(operations_status: Any) -> str:
    status = _json(operations_status)
    return (
        ", ".join(
            f"{op}: {'done' if s.get('completed') else ('started' if s.get('started_at') else 'not started')}"
            for op, s in status.items()
        )
        or "no operation started"
    )


def _path_violations(row: Any, transitions: list[Any]) -> list[str]:
    identifier = row["identifier"]
    if not transitions:
        return [f"path: {identifier} has no state history"]
    problems = []
    previous: str | None = None
    for transition in transitions:
        step = (transition["from_state"], transition["to_state"])
        if transition["from_state"] != previous:
            problems.append(f"path: {identifier}: {step} does not follow {previous}")
        elif step not in ALLOWED_TRANSITIONS:
            problems.append(f"path: {identifier}: {step} ({transition['event']}) is not a transition of the machine")
        previous = transition["to_state"]
    if previous != row["state"]:
        problems.append(f"path: {identifier}: history ends in {previous}, the object is {row['state']}")
    return problems


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


Entry = tuple[bytes, dict[bytes, bytes]]


async def read_stream(
    redis: Redis, stream: str, *, newest: bool = False, count: int = 100, at: str | None = None
) -> list[Entry]:
    """XRANGE (oldest first), XREVRANGE (`newest`), or the one entry `at`, typed."""
    if at is not None:
        raw = await redis.xrange(stream, min=at, max=at)
    elif newest:
        raw = await redis.xrevrange(stream, count=count)
    else:
        raw = await redis.xrange(stream, count=count)
    return cast("list[Entry]", raw or [])


async def repeat(every: float, until: Callable[[], bool], action: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `action` every `every` seconds until `until()` says stop."""
    while not until():
        await action()
        await asyncio.sleep(every)
