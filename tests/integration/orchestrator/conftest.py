"""Databases of their own for tests whose subject is global to a database.

Admission counts every `processing` object and takes the oldest `queued` ones, and the outbox sweep takes every
pending row: on the session's shared database they would see other tests' objects and rows. Such tests get a
fresh database, cloned from a template migrated once per session (cloning is much faster than migrating).
"""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

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
async def isolated_sessionmaker(template_database: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A sessionmaker over a fresh, migrated database that only this test uses."""
    name = f"opa_iso_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    engine = create_async_engine(_url_of(name))
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()
        await _drop(name)
