import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.types import Scope

from libs.common.broker import ensure_topology, make_broker, redis_client, supervise_subscribers
from libs.common.reclaim import LOCK_REFRESH_SECONDS
from libs.common.trim import prune_consumers, trim_streams
from services.orchestrator.database import Database
from services.orchestrator.handlers import Orchestrator, reclaimers, register
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()

REDIS_EPOCH_KEY = "orchestrator:redis-epoch"


def create_app(settings: OrchestratorSettings) -> AsgiFastStream:
    broker = make_broker(settings)
    database = Database(str(settings.database_url), settings.database_pool_size)
    redis = redis_client(str(settings.redis_url))
    relay = OutboxRelay(database, redis, settings.stream_maxlen)
    orchestrator = Orchestrator(database, redis, relay, ObjectService(settings.max_parallel_workers))
    register(broker, settings, orchestrator)

    async def redis_watchdog() -> None:
        # Redis keeps nothing on disk here: after it restarts empty, re-create the topology at once and re-send the
        # work that was in flight, from PostgreSQL (the truth). The marker key disappears with the data. Running
        # executors re-assert their running keys within LOCK_REFRESH_SECONDS; the pause lets them, so work that is
        # still running is not sent twice.
        while True:
            try:
                if not await redis.exists(REDIS_EPOCH_KEY):
                    await ensure_topology(redis)
                    await redis.set(REDIS_EPOCH_KEY, settings.instance_id)
                    await asyncio.sleep(LOCK_REFRESH_SECONDS * 3)
                    await orchestrator.redispatch_lost(older_than_seconds=0)
                    # Once more after the running keys of executors that died with Redis have expired.
                    await asyncio.sleep(settings.claim_idle_ms / 1000)
                    await orchestrator.redispatch_lost(older_than_seconds=0)
            except Exception:
                log.exception("redis_watchdog.failed")
            await asyncio.sleep(settings.reclaim_interval_seconds)

    async def lost_work_loop() -> None:
        # Work lost any other way (an entry deleted or trimmed by hand, a watchdog that died mid-way) is found by age.
        while True:
            await asyncio.sleep(settings.redispatch_check_seconds)
            try:
                await orchestrator.redispatch_lost(settings.redispatch_after_seconds)
            except Exception:
                log.exception("redispatch.failed")

    async def maintenance_loop() -> None:
        while True:
            await asyncio.sleep(settings.maintenance_interval_seconds)
            try:
                removed = await trim_streams(redis, settings.stream_retention_seconds * 1000)
                consumers = await prune_consumers(redis, settings.consumer_retention_seconds * 1000)
                log.info("streams.trimmed", removed=removed, consumers_deleted=consumers)
            except Exception:
                log.exception("streams.trim_failed")

    async def admission_loop() -> None:
        # Admission also runs after every commit that frees a slot; this loop covers slots freed by another
        # instance that died before admitting, and objects queued while no orchestrator was running.
        while True:
            try:
                await orchestrator.admit()
            except Exception:
                log.exception("admission.failed")
            await asyncio.sleep(settings.admission_interval_seconds)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await database.open()  # before the broker starts consuming
        await ensure_topology(redis)
        tasks = [
            asyncio.create_task(relay.run(settings.outbox_sweep_seconds), name="outbox-relay"),
            asyncio.create_task(admission_loop(), name="admission"),
            asyncio.create_task(redis_watchdog(), name="redis-watchdog"),
            asyncio.create_task(maintenance_loop(), name="maintenance"),
            asyncio.create_task(lost_work_loop(), name="lost-work"),
            asyncio.create_task(
                supervise_subscribers(broker, redis, settings.reclaim_interval_seconds), name="subscribers"
            ),
            *(
                asyncio.create_task(
                    reclaimer.run(settings.reclaim_interval_seconds), name=f"reclaim:{reclaimer.stream}"
                )
                for reclaimer in reclaimers(redis, settings, orchestrator)
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # what was published is deleted now, not swept (and published again) by another instance
                await relay.flush_published()
            except Exception:  # noqa: BLE001 - the sweep publishes it again, which consumers absorb
                log.warning("outbox.final_flush_failed")
            await redis.aclose()
            await database.close()

    @get(include_in_schema=False)
    async def health(scope: Scope) -> AsgiResponse:  # noqa: ARG001
        try:
            async with database.connection() as connection:
                await connection.execute("SELECT 1")
            await redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return AsgiResponse(f'{{"status":"unhealthy","error":"{type(exc).__name__}"}}'.encode(), 503)
        return AsgiResponse(b'{"status":"ok"}', 200, headers={"content-type": "application/json"})

    return AsgiFastStream(
        broker,
        logger=logging.getLogger("opa.faststream"),
        asgi_routes=[("/health", health)],
        lifespan=lifespan,
        asyncapi_path="/asyncapi",
    )
