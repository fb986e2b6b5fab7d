"""The outbox relay: publishes what committed transactions owe to Redis, then deletes it.

Handlers call `publish(ids)` right after their commit (the fast path); `run()` sweeps whatever is left, e.g.
rows of an instance that crashed between commit and publish. Rows are taken `FOR UPDATE SKIP LOCKED`, so any
number of relays can run and each row is published by one of them; a crash after XADD and before the delete
publishes a row twice, which consumers absorb (they are idempotent on `message_id`).
"""

import asyncio
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.events.streams import DATA_FIELD
from services.orchestrator.repository import OutboxRepository

log = structlog.get_logger()

BATCH_SIZE = 500


class OutboxRelay:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis, stream_maxlen: int) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.stream_maxlen = stream_maxlen

    async def publish(self, ids: Sequence[int] | None = None) -> int:
        """Publish the given rows (or any pending rows, oldest first) and delete them. Returns how many."""
        if ids is not None and not ids:
            return 0
        async with self.sessionmaker.begin() as session:
            outbox = OutboxRepository(session)
            rows = await outbox.lock_batch(ids, BATCH_SIZE)
            if not rows:
                return 0
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(row.stream, {DATA_FIELD: row.body}, maxlen=self.stream_maxlen, approximate=True)
                await pipe.execute()
            await outbox.delete([row.id for row in rows])
        return len(rows)

    async def run(self, interval: float) -> None:
        while True:
            try:
                while await self.publish() == BATCH_SIZE:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox.sweep_failed")
            await asyncio.sleep(interval)
