"""The orchestrator's asyncpg pool: what a connection carries back into the pool."""

from services.orchestrator.database import Database


async def test_a_transaction_left_open_is_rolled_back_when_its_connection_returns(
    isolated_database: Database,
) -> None:
    async with isolated_database.connection() as connection:
        await connection.execute("BEGIN")
        await connection.execute("INSERT INTO outbox_message (stream, body) VALUES ('s', 'left open')")
        backend = await connection.fetchval("SELECT pg_backend_pid()")

    async with isolated_database.connection() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == backend, "the same connection, reused"
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT count(*) FROM outbox_message") == 0


async def test_transaction_level_advisory_locks_end_with_their_transaction(isolated_database: Database) -> None:
    async with isolated_database.transaction() as connection:
        await connection.execute("SELECT pg_advisory_xact_lock(42)")
        backend = await connection.fetchval("SELECT pg_backend_pid()")

    async with isolated_database.connection() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == backend
        held = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
        assert await connection.fetchval("SELECT pg_try_advisory_xact_lock(42)") is True
