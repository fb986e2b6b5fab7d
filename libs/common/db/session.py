from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from libs.common.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """Each connection is tested before use (a round trip per checkout): request handlers would otherwise answer 503
    once per stale connection after a database restart. (The orchestrator, a stream consumer whose failed handlers
    are retried anyway, uses asyncpg itself: services/orchestrator/database.py.)"""
    return create_async_engine(
        str(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=True,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
