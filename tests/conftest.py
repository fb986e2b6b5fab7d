"""Shared fixtures. Integration and end-to-end tests use real services:

- PostgreSQL at TEST_DATABASE_URL: each test session creates its own database there, migrates it with
  alembic, and drops it at the end;
- Redis at TEST_REDIS_URL: a database index reserved for tests, flushed at the start of each stack;
- S3 at TEST_S3_ENDPOINT, or, when unset, a moto server process this session starts.

`make test` points the TEST_* variables at this machine's services.
"""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from deploy.local import s3_server
from deploy.local.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e", "contract")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in TIERS and parts[0] != "unit":
            item.add_marker(getattr(pytest.mark, parts[0]))


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: point it at a running service (see tests/conftest.py), or run `make test`")
    return value


@contextmanager
def local_s3_server() -> Iterator[str]:
    """deploy/local/s3_server.py on a free port, for as long as the block runs; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        s3_server.command("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    if endpoint := os.environ.get("TEST_S3_ENDPOINT"):
        yield endpoint
        return
    with local_s3_server() as endpoint:
        yield endpoint


async def _admin_connection() -> asyncpg.Connection:
    url = make_url(required_env("TEST_DATABASE_URL"))
    return await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A new, migrated database for this test session."""
    name = f"opa_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(required_env("TEST_DATABASE_URL")).set(database=name, drivername="postgresql+asyncpg")
    rendered = url.render_as_string(hide_password=False)
    migrate = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "alembic", "upgrade", "head"),
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": rendered},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await migrate.communicate()
    if migrate.returncode != 0:
        pytest.fail(f"alembic upgrade head failed:\n{output.decode()}")
    yield rendered
    admin = await _admin_connection()
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return required_env("TEST_REDIS_URL")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def bucket() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
