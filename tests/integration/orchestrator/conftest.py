"""The orchestrator's database, and databases of their own for tests whose subject is global to a database.

Admission counts every `processing` object and takes the oldest `queued` ones, and the outbox sweep takes every
pending row: on the session's shared database they would see other tests' objects and rows. Such tests get a
fresh database, cloned from a template migrated once per session (cloning is much faster than migrating).

The orchestrator talks to PostgreSQL through asyncpg (services/orchestrator/database.py); tests read what it wrote
through SQLAlchemy's models, which are the schema, and so check its SQL against them.
"""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from libs.common.events import OperationCompletedV1, RunOperationV1
from services.orchestrator.database import Database
from tests.conftest import ROOT, _admin_connection, required_env


def _url_of(name: str) -> str:
    url = make_url(required_env("TEST_DATABASE_URL")).set(database=name, drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


async def _drop(name: str) -> None:
    admin = await _admin_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Statements:
    """The statements a Database's connections send, as asyncpg logs them, for tests that count them."""

    def __init__(self) -> None:
        self._watches: list[tuple[Callable[[str], bool], list[str]]] = []

    def watch(self, wanted: Callable[[str], bool]) -> list[str]:
        """A list that receives, from now on, each statement `wanted` picks."""
        sent: list[str] = []
        self._watches.append((wanted, sent))
        return sent

    def record(self, query: Any) -> None:  # an asyncpg LoggedQuery
        for wanted, sent in self._watches:
            if wanted(query.query):
                sent.append(query.query)

    async def attach(self, connection: asyncpg.Connection) -> None:
        connection.add_query_logger(self.record)  # a set: attaching again at every acquire adds nothing


@pytest.fixture(scope="session")
async def database(database_url: str) -> AsyncIterator[Database]:
    """The orchestrator's Database over the session's shared database."""
    db = Database(database_url, size=5)
    await db.open()
    yield db
    await db.close()


@pytest.fixture(scope="session")
async def template_database() -> AsyncIterator[str]:
    """A migrated database that nothing connects to, so that it can serve as a template."""
    name = f"opa_tpl_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        migrate = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "alembic", "upgrade", "head"),
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": _url_of(name)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await migrate.communicate()
        if migrate.returncode != 0:
            pytest.fail(f"alembic upgrade head failed:\n{output.decode()}")
        yield name
    finally:
        await _drop(name)


@pytest.fixture
async def isolated_url(template_database: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database that only this test uses."""
    name = f"opa_iso_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    try:
        yield _url_of(name)
    finally:
        await _drop(name)


@pytest.fixture
async def isolated_sessionmaker(isolated_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A sessionmaker over the test's own database."""
    engine = create_async_engine(isolated_url)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@pytest.fixture
def statements() -> Statements:
    """What `isolated_database` sends."""
    return Statements()


@pytest.fixture
async def isolated_database(isolated_url: str, statements: Statements) -> AsyncIterator[Database]:
    """The orchestrator's Database over the test's own database."""
    db = Database(isolated_url, size=5, setup=statements.attach)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def completed_result(run: RunOperationV1, operation: str, index: int) -> OperationCompletedV1:
    """What an executor reports for `operation` (at `index`) of the chain `run` began."""
    return OperationCompletedV1(
        object_id=run.object_id,
        task_id=run.task_id,
        operation=operation,
        index=index,
        executor_id="executor-1",
        s3_url=f"s3://bucket/{run.identifier}/{operation}_result.json",
        duration_ms=1.0,
    )
