"""SQL of the gateway. The object tables are only read here (the orchestrator owns all object state); the
`api_key` table is the gateway's own and is written here."""

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db.models import ApiKey, ProcessingObject
from libs.common.domain import ObjectState


class ObjectReader:
    """Every read but the system-wide counts is confined to one tenant: another tenant's object is not found."""

    def __init__(self, session: AsyncSession, tenant: str) -> None:
        self.session = session
        self.tenant = tenant

    async def get(self, object_id: UUID) -> ProcessingObject | None:
        return await self.session.scalar(
            select(ProcessingObject).where(ProcessingObject.id == object_id, ProcessingObject.tenant == self.tenant)
        )

    async def get_by_identifier(self, identifier: str) -> ProcessingObject | None:
        return await self.session.scalar(
            select(ProcessingObject).where(
                ProcessingObject.tenant == self.tenant, ProcessingObject.identifier == identifier
            )
        )

    async def owned(self, ids: Sequence[UUID]) -> set[UUID]:
        rows = await self.session.scalars(
            select(ProcessingObject.id).where(ProcessingObject.id.in_(ids), ProcessingObject.tenant == self.tenant)
        )
        return set(rows)

    async def page(
        self, state: ObjectState | None, after: tuple[datetime, UUID] | None, limit: int
    ) -> Sequence[ProcessingObject]:
        query = (
            select(ProcessingObject)
            .where(ProcessingObject.tenant == self.tenant)
            .order_by(ProcessingObject.created_at, ProcessingObject.id)
            .limit(limit)
        )
        if state is not None:
            query = query.where(ProcessingObject.state == state.value)
        if after is not None:
            query = query.where(tuple_(ProcessingObject.created_at, ProcessingObject.id) > tuple_(*after))
        return (await self.session.scalars(query)).all()


class StatusReader:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_by_state(self) -> dict[ObjectState, int]:
        """System-wide: the queue and the processing slots are shared by every tenant."""
        rows = await self.session.execute(
            select(ProcessingObject.state, func.count())
            .where(ProcessingObject.state.in_([ObjectState.QUEUED.value, ObjectState.PROCESSING.value]))
            .group_by(ProcessingObject.state)
        )
        return {ObjectState(state): count for state, count in rows.tuples()}


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, key: ApiKey) -> None:
        self.session.add(key)

    async def list(self, tenant: str | None) -> Sequence[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        return (await self.session.scalars(query)).all()

    async def find(self, id_or_prefix: str, tenant: str | None) -> ApiKey | None:
        try:
            condition = ApiKey.id == UUID(id_or_prefix)
        except ValueError:
            condition = ApiKey.prefix == id_or_prefix
        query = select(ApiKey).where(condition)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        return await self.session.scalar(query)

    async def revoke(self, key_id: UUID) -> None:
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=datetime.now(UTC))
        )
