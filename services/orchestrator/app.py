import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.types import Scope
from redis.asyncio import Redis
from sqlalchemy import text

from libs.common.broker import ensure_topology, make_broker
from libs.common.db.session import create_engine, create_sessionmaker
from services.orchestrator.handlers import Orchestrator, register
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.service import ObjectService
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()


def create_app(settings: OrchestratorSettings) -> AsgiFastStream:
    broker = make_broker(settings)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    redis = Redis.from_url(str(settings.redis_url))
    relay = OutboxRelay(sessionmaker, redis, settings.stream_maxlen)
    orchestrator = Orchestrator(sessionmaker, redis, relay, ObjectService(settings.max_parallel_workers))
    register(broker, settings, orchestrator)

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
        await ensure_topology(redis)
        tasks = [
            asyncio.create_task(relay.run(settings.outbox_sweep_seconds), name="outbox-relay"),
            asyncio.create_task(admission_loop(), name="admission"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await redis.aclose()
            await engine.dispose()

    @get(include_in_schema=False)
    async def health(scope: Scope) -> AsgiResponse:  # noqa: ARG001
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
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
