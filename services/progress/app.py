import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from libs.common import problems
from libs.common.auth import Authenticator
from libs.common.broker import ensure_topology, make_broker, redis_client
from libs.common.db.session import create_engine, create_sessionmaker
from libs.common.events import ObjectProgressedV1
from libs.common.events.streams import OBJECT_EVENTS
from libs.common.ratelimit import StreamSlots
from services.progress import events
from services.progress.hub import Hub
from services.progress.routes import router
from services.progress.service import ProgressStreams
from services.progress.settings import ProgressSettings

log = logging.getLogger(__name__)


def create_app(settings: ProgressSettings) -> FastAPI:
    broker = make_broker(settings)
    hub = Hub(settings.subscriber_queue_size)

    # No consumer group: every progress instance reads every event (XREAD from "$"), since any of them may hold
    # subscribers of any object; a read at a time, decoding only the events of objects followed here.
    parse, decode = events.reader(hub)
    linger = settings.events_read_linger_ms / 1000

    @broker.subscriber(
        stream=events.SUBSCRIPTION,
        parser=parse,
        decoder=decode,
        title="object-events",
        description="Read in batches; each stream entry holds one of these messages.",
    )
    async def on_object_events(body: list[ObjectProgressedV1]) -> None:
        for event in body:
            hub.publish(event)
        # After the events are out: a lone event is never delayed, a busy stream is read in larger batches.
        read: events.FollowedEvents = broker.context.get_local("message")
        if wait := events.linger_after(read.read, linger):
            await asyncio.sleep(wait)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        redis = redis_client(str(settings.redis_url))
        await ensure_topology(redis, [OBJECT_EVENTS])
        await broker.start()
        app.state.settings = settings
        app.state.engine = engine
        app.state.redis = redis
        app.state.hub = hub
        sessionmaker = create_sessionmaker(engine)
        app.state.streams = ProgressStreams(sessionmaker, hub, settings.sse_retry_ms)
        app.state.authenticator = Authenticator(settings, sessionmaker)
        app.state.stream_slots = StreamSlots(redis)
        try:
            yield
        finally:
            await broker.stop()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="Object Processing API - progress", lifespan=lifespan)
    app.state.broker = broker  # read by deploy/asyncapi.py to document the streams this service uses
    app.include_router(router)

    # As the gateway's: nginx sends the SSE streams straight here (deploy/nginx/nginx.conf).
    problems.install(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            async with app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await app.state.redis.ping()
        except Exception as exc:  # noqa: BLE001 - report, do not raise
            return JSONResponse({"status": "unhealthy", "error": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "subscribers": hub.subscriber_count})

    return app
