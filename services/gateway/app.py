from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from faststream.redis import StreamSub
from sqlalchemy import text

from libs.common import problems
from libs.common.auth import Authenticator
from libs.common.broker import ensure_topology, make_broker, redis_client
from libs.common.db.session import create_engine, create_sessionmaker
from libs.common.events import AnyObjectCommand
from libs.common.events.streams import OBJECT_COMMANDS, reply_channel
from libs.common.ratelimit import RateLimiter
from services.gateway.apikeys import ApiKeyService
from services.gateway.commands import CommandBus
from services.gateway.middleware import BodyLimitMiddleware, LoadSheddingMiddleware, RequestContextMiddleware
from services.gateway.proxy import StreamProxy
from services.gateway.routes import router
from services.gateway.security import RateLimits
from services.gateway.service import GatewayService, SubmissionLimits
from services.gateway.settings import GatewaySettings

log = structlog.get_logger()

DESCRIPTION = """
Submit objects, run an ordered list of operations on each (validate, transform, enrich, analyze, export),
and follow their progress. Every error is RFC 9457 problem details (`application/problem+json`).

Authentication: an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>` (or a JWT of the configured
issuer). Scopes: `submit` (submit, cancel, retry), `read` (every read and stream), `admin` (everything, and the
API keys). Every object belongs to the tenant of the key that submitted it; another tenant's object answers 404.
Requests are rate limited per key (`RateLimit-*` headers; 429 with `Retry-After` past the limit).
"""


def create_app(settings: GatewaySettings) -> FastAPI:
    broker = make_broker(settings)
    # CommandBus writes this stream with plain XADDs; the declaration documents it in AsyncAPI.
    broker.publisher(
        stream=StreamSub(OBJECT_COMMANDS, maxlen=settings.stream_maxlen),
        schema=AnyObjectCommand,
        title="object-commands",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        redis = redis_client(str(settings.redis_url))
        await ensure_topology(redis)
        await broker.start()
        commands = CommandBus(
            redis,
            settings.stream_maxlen,
            reply_channel(settings.service_name, settings.instance_id),
            settings.command_timeout_seconds,
        )
        await commands.start()
        proxy = StreamProxy(str(settings.progress_url))
        sessionmaker = create_sessionmaker(engine)
        authenticator = Authenticator(settings, sessionmaker)
        app.state.engine = engine
        app.state.redis = redis
        app.state.proxy = proxy
        app.state.authenticator = authenticator
        app.state.rate_limits = RateLimits(
            RateLimiter(redis), settings.rate_limit_per_minute, settings.rate_limit_anonymous_per_minute
        )
        app.state.keys = ApiKeyService(sessionmaker)
        app.state.service = GatewayService(
            sessionmaker,
            commands,
            settings.max_parallel_workers,
            SubmissionLimits(
                payload_bytes=settings.max_payload_bytes,
                operations=settings.max_operations,
                options_bytes=settings.max_options_bytes,
                metadata_bytes=settings.max_metadata_bytes,
            ),
            authenticator.stream_tokens,
        )
        if not settings.auth_enabled:
            log.warning("auth.disabled", detail="AUTH_ENABLED is false: every request has every scope")
        try:
            yield
        finally:
            await proxy.close()
            await commands.stop()
            await broker.stop()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="Object Processing API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.broker = broker  # read by deploy/asyncapi.py to document the streams this service uses
    problems.install(app)
    app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "Last-Event-ID", "X-Request-ID", "Authorization", "X-API-Key"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "WWW-Authenticate",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(LoadSheddingMiddleware, max_in_flight=settings.max_in_flight_requests)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/health", tags=["health"], responses={503: {"description": "A dependency is unreachable."}})
    async def health() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["postgres"] = "ok"
        except Exception as exc:  # noqa: BLE001 - report, do not raise
            checks["postgres"] = type(exc).__name__
        try:
            await app.state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = type(exc).__name__
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": checks}, status_code=200 if healthy else 503
        )

    return app
