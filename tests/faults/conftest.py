"""The fault-injection suite's world: PostgreSQL, Redis and an S3 proxy of its own, and one stack per fault.

The suite starts its own PostgreSQL cluster (initdb into a temporary folder, run as the unprivileged `postgres`
user) and its own redis-server, so that killing or restarting them touches nothing else; the services reach the
session's S3 server (moto) through a TCP proxy that the suite can switch off. Each test gets a fresh stack
(every service its own process, exactly as `make run` starts them) on a database of its own, over a flushed
Redis, so that one fault's aftermath never leaks into the next.
"""

import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from deploy.local.stack import Stack, StackSettings, port_is_bindable
from tests.conftest import ROOT
from tests.e2e.s3 import s3
from tests.faults.harness import Sources, System
from tests.faults.proxy import TcpProxy
from tests.faults.report import ROWS, render
from tests.faults.servers import PG_BIN, PostgresServer, RedisServer

HERE = Path(__file__).resolve().parent
LOG_DIR = ROOT / "var" / "test-logs" / "faults"

BIG_RECORDS = 40_000
"""About 2.4 MB of NDJSON: with the options of `harness.BIG_OPTIONS`, about a second per operation."""
LONG_RECORDS = 120_000
"""About 7 MB: its validation runs longer than CLAIM_IDLE_MS, so only heartbeats keep it from being taken over."""

STACK_ENV = {
    # Take a dead consumer's work over after 5 s (a live one renews its entries every CLAIM_IDLE_MS/3).
    "CLAIM_IDLE_MS": "5000",
    "RECLAIM_INTERVAL_SECONDS": "1",
    "MAX_DELIVERIES": "5",
    "MAX_PARALLEL_WORKERS": "3",
    "GRACEFUL_TIMEOUT_SECONDS": "3",
    "LOG_FORMAT": "console",
    "LOG_LEVEL": os.environ.get("TEST_SERVICE_LOG_LEVEL", "INFO"),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault injection; starts its own PostgreSQL, Redis and every service as processes"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)
            # Needs services, like the end-to-end tier: `-m "not e2e"` (make test-fast) leaves it out.
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "fault injection")
        for line in render(ROWS).splitlines():
            terminalreporter.write_line(line)


# --- the suite's own servers -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    shutil.rmtree(LOG_DIR, ignore_errors=True)  # this session's logs only
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN}")
    server = PostgresServer(_ports(1)[0])
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.log.exists():
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(server.log, LOG_DIR / "postgres.log")
        server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(_ports(1)[0], LOG_DIR / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    upstream = urlsplit(s3_endpoint)
    proxy = TcpProxy(_ports(1)[0], upstream.hostname or "127.0.0.1", upstream.port or 80)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def fault_bucket() -> str:
    return "faults-" + os.urandom(4).hex()


def _ndjson(records: int) -> bytes:
    return b"".join(
        orjson.dumps({"id": i, "group": f"g{i % 50}", "value": i % 1000, "note": "x" * (i % 40)}) + b"\n"
        for i in range(records)
    )


@pytest.fixture(scope="session")
async def sources(s3_endpoint: str, fault_bucket: str) -> Sources:
    """The bucket (versioned: every write of an artifact is kept, so a second write shows), and the inputs."""
    async with s3(s3_endpoint, fault_bucket) as client:
        await client.create_bucket(Bucket=fault_bucket)
        await client.put_bucket_versioning(Bucket=fault_bucket, VersioningConfiguration={"Status": "Enabled"})
        for key, records in (("inputs/big.ndjson", BIG_RECORDS), ("inputs/long.ndjson", LONG_RECORDS)):
            body = _ndjson(records)
            await client.put_object(Bucket=fault_bucket, Key=key, Body=body, ContentType="application/x-ndjson")
    return Sources(big=f"s3://{fault_bucket}/inputs/big.ndjson", long=f"s3://{fault_bucket}/inputs/long.ndjson")


# --- one stack per test ------------------------------------------------------------------------------------


@pytest.fixture
def system(
    request: pytest.FixtureRequest,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    s3_proxy: TcpProxy,
    s3_endpoint: str,
    fault_bucket: str,
    sources: Sources,
) -> Iterator[System]:
    # Whatever an earlier fault left behind is undone: every dependency up, Redis empty.
    if not postgres_server.running():
        postgres_server.start()
    if redis_server.popen is None or redis_server.popen.poll() is not None:
        redis_server.start()
    redis_server.flushall()
    s3_proxy.unblock()

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower()).strip("-")[:40]
    database = "faults_" + name.replace("-", "_")
    stack: Stack | None = None
    for attempt in range(1, 4):
        ports = _ports(3)
        settings = StackSettings(
            database_url=postgres_server.url(database),
            redis_url=redis_server.url,
            s3_endpoint_url=s3_proxy.url,
            s3_bucket=fault_bucket,
            gateway_port=ports[0],
            orchestrator_port=ports[1],
            progress_port=ports[2],
            executor_base_port=_ports(1, run=3)[0],
            executors=3,
            orchestrators=1,
        )
        stack = Stack(settings, extra_env=STACK_ENV, log_dir=LOG_DIR / name)
        try:
            stack.start(timeout=90)
            break
        except RuntimeError:  # e.g. a port taken between its choice and its use; start() has stopped everything
            if attempt == 3:
                raise
    assert stack is not None
    try:
        yield System(
            name=name,
            stack=stack,
            postgres=postgres_server,
            redis=redis_server,
            proxy=s3_proxy,
            s3_endpoint=s3_endpoint,
            bucket=fault_bucket,
            sources=sources,
            database=database,
        )
    finally:
        # The database stays (the whole cluster goes at the end of the session): it is the evidence of a failure.
        stack.stop(timeout=20)


_handed_out: set[int] = set()


def _ports(count: int, run: int = 1) -> list[int]:
    """`count` free ports (each the first of `run` consecutive free ports) below the ephemeral range, so that no
    outgoing connection of any process can be holding one when a service binds it, and none handed out twice."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20_000, 32_000 - run)  # noqa: S311 - not crypto
        candidates = range(port, port + run)
        if any(p in _handed_out or not port_is_bindable(p) for p in candidates):
            continue
        _handed_out.update(candidates)
        chosen.append(port)
    return chosen
