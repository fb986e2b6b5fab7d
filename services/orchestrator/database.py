"""The orchestrator's PostgreSQL connections: an asyncpg pool, without SQLAlchemy.

Every message the orchestrator applies is a short transaction of a few statements. Through SQLAlchemy's
session and ORM such a transaction cost 1.7 to 2.3 ms of CPU in this process, more than the use case and
everything around it; on asyncpg itself, about 0.45 ms. (The gateway and the progress service, which only
read, keep SQLAlchemy; the schema stays in libs/common/db/models.py and its migrations.)
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy.engine import make_url

CLOSE_GRACE_SECONDS = 10.0

SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback")
"""Query parameters of SQLAlchemy's asyncpg dialect: asyncpg itself would send them to the server as settings."""


def asyncpg_dsn(database_url: str) -> str:
    """The libpq form of a SQLAlchemy URL (`postgresql+asyncpg://...`), which asyncpg takes. SQLAlchemy's `ssl=`
    is libpq's `sslmode=`."""
    url = make_url(database_url)
    query = {key: value for key, value in url.query.items() if key not in SQLALCHEMY_ONLY}
    if "ssl" in query and "sslmode" not in query:
        query["sslmode"] = query.pop("ssl")
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def _encode_json(value: Any) -> str:
    # The values are JSON already (validated messages) plus aware datetimes and UUIDs; what orjson refuses of that is
    # an integer beyond 64 bits, which a payload may hold: the standard library takes it.
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def _init(connection: asyncpg.Connection) -> None:
    # jsonb as Python values both ways, as the ORM's JSONB columns were. Read with the standard library's parser,
    # as SQLAlchemy did: orjson reads an integer beyond 64 bits as a float, which would change a payload.
    await connection.set_type_codec("jsonb", encoder=_encode_json, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """What a connection needs before going back to the pool, beyond the rollback of a transaction left open (which
    asyncpg does anyway): nothing. The orchestrator takes only transaction-level advisory locks, and sets, listens
    and declares nothing, so asyncpg's default reset (unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) would be a round
    trip per transaction for a session that has nothing to reset."""


class Database:
    """A pool of up to `size` connections, opened in the service's lifespan (asyncpg binds it to the running loop).
    It connects on demand, so the service starts while PostgreSQL is down; a connection the server closed (a
    restart) fails the statement that meets it, whose message is retried, and is replaced on a later acquire."""

    def __init__(self, database_url: str, size: int, **pool_options: Any) -> None:
        """`pool_options` go to asyncpg.create_pool as they are (a `setup` run at each acquire, say)."""
        self.dsn = asyncpg_dsn(database_url)
        self.size = size
        self.pool_options = pool_options
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=0, max_size=self.size, init=_init, reset=_keep_session, **self.pool_options
        )

    async def close(self) -> None:
        """Close every connection, waiting up to CLOSE_GRACE_SECONDS for those in use; then cut the rest."""
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_GRACE_SECONDS)
        except TimeoutError:
            self._pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database is not open: call open() first (in the service's lifespan)")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in autocommit: each statement commits on its own."""
        async with self.pool.acquire() as connection:
            yield connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction that commits when the block ends, and rolls back if it raises.

        A connection the server closed (a restart, a failover) raises what closed it, or ConnectionLostError: never
        asyncpg's InterfaceError of the rollback or commit that could not be sent, which would hide that cause."""
        async with self.pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                yield connection
            except BaseException as exc:
                if not _lost(connection):
                    await transaction.rollback()
                elif isinstance(exc, asyncpg.InterfaceError):  # a statement on it after it closed
                    raise ConnectionLostError("the connection closed mid-transaction: nothing committed") from exc
                raise  # a lost one's transaction ended with it, on the server
            try:
                await transaction.commit()
            except asyncpg.InterfaceError as exc:
                if _lost(connection):
                    raise ConnectionLostError("the connection closed before the commit: nothing committed") from exc
                raise


def _lost(connection: asyncpg.Connection) -> bool:
    """Whether the server closed this pooled connection. asyncpg lets go at once of a connection that closed,
    and its proxy then refuses every call, `is_closed` included."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True


class ConnectionLostError(ConnectionError):
    """The server closed the connection of a transaction before it committed."""
