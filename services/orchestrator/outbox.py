"""The outbox relay: publishes what committed transactions owe to Redis, then deletes it.

Right after a commit (the fast path), the rows are still in memory, so they are added to their streams at once,
without a second transaction: handlers queue them with `add` on the pipeline that carries the rest of what their
commit owes Redis, and hand them to `published` once they are on their streams; other callers use
`publish_committed(rows)`. The relay's own loop deletes every row
published in the last FLUSH_SECONDS with one autocommitted statement: under load that is one statement for many
transactions, none of them in a handler's transaction, where it would add a round trip to each. `run()` also
sweeps whatever is left, e.g. rows of an instance that crashed between commit and publish; it takes only rows
older than `SWEEP_MIN_AGE_SECONDS`, so it does not race the fast path, and takes them `FOR UPDATE SKIP LOCKED`, so
any number of relays can run. A crash (or a failed delete) after XADD publishes a
row twice, which consumers absorb (they are idempotent on `message_id`).
"""

import asyncio
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from libs.common.events.streams import DATA_FIELD
from services.orchestrator.database import Database
from services.orchestrator.repository import OutboxRepository, OutboxRow

log = structlog.get_logger()

BATCH_SIZE = 500
SWEEP_MIN_AGE_SECONDS = 5.0
FLUSH_SECONDS = 0.1


class OutboxRelay:
    def __init__(self, database: Database, redis: Redis, stream_maxlen: int) -> None:
        self.database = database
        self.redis = redis
        self.stream_maxlen = stream_maxlen
        self._published: list[int] = []
        """Ids of rows on their streams and not yet deleted."""

    async def publish_committed(self, rows: Sequence[OutboxRow]) -> None:
        """Publish rows that the caller's transaction has just committed; they are deleted soon after."""
        if not rows:
            return
        await self._xadd(rows)
        self.published(rows)

    def add(self, pipe: Pipeline, rows: Sequence[OutboxRow]) -> int:
        """Queue committed rows' XADDs on a pipeline the caller runs (with the rest of what its commit owes Redis),
        one per row, in order: returns how many; the caller hands those that succeeded to `published`."""
        for row in rows:
            pipe.xadd(row.stream, {DATA_FIELD: row.body}, maxlen=self.stream_maxlen, approximate=True)
        return len(rows)

    def published(self, rows: Sequence[OutboxRow]) -> None:
        """Rows now on their streams: deleted with the next flush."""
        self._published.extend(row.id for row in rows)

    async def flush_published(self) -> None:
        """Delete the published rows, with one autocommitted statement."""
        ids, self._published = self._published, []
        if not ids:
            return
        try:
            async with self.database.connection() as connection:
                await OutboxRepository(connection).delete(ids)
        except BaseException:
            self._published.extend(ids)  # the next flush tries again
            raise

    async def publish(self, ids: Sequence[int] | None = None, min_age_seconds: float = 0.0) -> int:
        """Publish the given rows (or any pending rows at least `min_age_seconds` old, oldest first) and delete
        them. Returns how many."""
        if ids is not None and not ids:
            return 0
        async with self.database.transaction() as connection:
            outbox = OutboxRepository(connection)
            rows = await outbox.lock_batch(ids, BATCH_SIZE, min_age_seconds)
            if not rows:
                return 0
            await self._xadd(rows)
            await outbox.delete([row.id for row in rows])
        return len(rows)

    async def _xadd(self, rows: Sequence[OutboxRow]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self.add(pipe, rows)
            await pipe.execute()

    async def run(self, interval: float) -> None:
        """Delete what was published every FLUSH_SECONDS; sweep left-behind rows every `interval`."""
        next_sweep = 0.0
        while True:
            try:
                await self.flush_published()
                if asyncio.get_running_loop().time() >= next_sweep:
                    next_sweep = asyncio.get_running_loop().time() + interval
                    while await self.publish(min_age_seconds=SWEEP_MIN_AGE_SECONDS) == BATCH_SIZE:
                        # A long sweep (a backlog after a Redis outage) must not leave the fast path's rows undeleted
                        # until they are old enough for another instance's sweep to publish them again.
                        await self.flush_published()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox.sweep_failed")
            await asyncio.sleep(FLUSH_SECONDS)
