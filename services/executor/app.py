import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import orjson
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.types import Scope

from libs.common.broker import ensure_topology, make_broker, redis_client, supervise_subscribers
from libs.common.s3 import s3_client, s3_objects
from services.executor.handlers import reclaimer, register
from services.executor.service import OperationRunner
from services.executor.settings import ExecutorSettings
from services.executor.storage import Storage


def create_app(settings: ExecutorSettings) -> AsgiFastStream:
    broker = make_broker(settings)
    stack = AsyncExitStack()
    executor = register(broker, settings)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with stack:
            redis = await stack.enter_async_context(redis_client(str(settings.redis_url)))
            await ensure_topology(redis)
            client = await stack.enter_async_context(s3_client(settings))
            storage = Storage(
                client,
                settings.s3_bucket,
                settings.storage_attempts,
                settings.storage_backoff_seconds,
                settings.s3_presign_expiry_seconds,
                objects=await stack.enter_async_context(s3_objects(settings)),
            )
            executor.redis = redis
            executor.runner = OperationRunner(
                storage, settings.instance_id, settings.max_document_bytes, settings.operation_timeout_seconds
            )
            tasks = [
                asyncio.create_task(reclaimer(redis, settings, executor).run(settings.reclaim_interval_seconds)),
                asyncio.create_task(supervise_subscribers(broker, redis, settings.reclaim_interval_seconds)),
            ]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    @get(include_in_schema=False)
    async def health(scope: Scope) -> AsgiResponse:  # noqa: ARG001
        checks = {"redis": "ok", "s3": "ok"}
        if not await broker.ping(timeout=2.0):
            checks["redis"] = "unreachable"
        if executor.runner is None:
            checks["s3"] = "starting"
        else:
            try:
                async with asyncio.timeout(2.0):
                    await executor.runner.storage.check()
            except Exception as exc:  # noqa: BLE001 - report, do not raise
                checks["s3"] = type(exc).__name__
        healthy = all(value == "ok" for value in checks.values())
        body = orjson.dumps({"status": "ok" if healthy else "unhealthy", "checks": checks})
        return AsgiResponse(body, 200 if healthy else 503, headers={"content-type": "application/json"})

    return AsgiFastStream(
        broker,
        logger=logging.getLogger("opa.faststream"),
        asgi_routes=[("/health", health)],
        lifespan=lifespan,
        asyncapi_path="/asyncapi",
    )
