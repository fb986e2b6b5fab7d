from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from libs.common.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings, *, pre_ping: bool = True) -> AsyncEngine:
    """`pre_ping` tests each connection before use (a round trip per checkout): right for request handlers, which
    would otherwise answer 503 once per stale connection after a database restart; stream consumers skip it,
    because a failed handler is retried anyway."""
    return create_async_engine(
        str(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=pre_ping,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
