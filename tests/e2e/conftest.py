"""The whole system as `make run` starts it: every service its own process, on free ports.

Each stack gets a database of its own (created and migrated by the stack, as `make run` does) and a Redis
database index of its own, flushed first, so stacks never read each other's streams.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis as redis_sync
from sqlalchemy.engine import make_url

from deploy.local.stack import Stack, StackSettings, listen_ports
from tests.conftest import ROOT, _admin_connection, required_env

LOG_DIR = ROOT / "var" / "test-logs"


async def _drop_database(name: str) -> None:
    admin = await _admin_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def stack_factory(s3_endpoint: str, bucket: str) -> Iterator[Callable[..., Stack]]:
    started: list[tuple[Stack, str]] = []
    redis_base = urlsplit(required_env("TEST_REDIS_URL"))
    base_index = int(redis_base.path.lstrip("/") or 0)

    def factory(name: str, *, auth: bool = False, **overrides: object) -> Stack:
        """A stack; `auth=True` turns authentication and the default rate limits on (off by default, as `make
        run` has them, so tests that are not about security need no keys)."""
        db_name = f"opa_e2e_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        database_url = (
            make_url(required_env("TEST_DATABASE_URL"))
            .set(database=db_name, drivername="postgresql+asyncpg")
            .render_as_string(hide_password=False)
        )
        # Counting down from below the configured index: 14, 13, ... one per stack of this session. The configured
        # index itself is the integration tests': they flush it, and a stack's services (they run until the session
        # ends) would otherwise consume and answer the commands those tests publish.
        redis_url = urlunsplit(redis_base._replace(path=f"/{(base_index - 1 - len(started)) % 16}"))
        redis_sync.Redis.from_url(redis_url).flushdb()
        settings = StackSettings(
            database_url=database_url,
            redis_url=redis_url,
            s3_endpoint_url=s3_endpoint,
            s3_bucket=bucket,
            auth_enabled=auth,
            **overrides,  # type: ignore[arg-type]
        )
        # One run of ports, so that no two services of the stack are given the same one.
        ports = listen_ports(3 + settings.executors)
        settings.gateway_port, settings.orchestrator_port, settings.progress_port = ports[:3]
        settings.executor_base_port = ports[3]
        extra_env = {"LOG_FORMAT": "console", "LOG_LEVEL": os.environ.get("TEST_SERVICE_LOG_LEVEL", "INFO")}
        stack = Stack(settings, extra_env=extra_env, log_dir=LOG_DIR / name)
        started.append((stack, db_name))
        stack.start(timeout=90)
        return stack

    yield factory
    with ThreadPoolExecutor(1) as pool:
        for stack, db_name in started:
            stack.stop()
            pool.submit(asyncio.run, _drop_database(db_name)).result()


@pytest.fixture(scope="session")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory("main")


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client
