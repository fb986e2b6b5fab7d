from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db.models import ObjectEvent, ProcessingObject

REPLAY_LIMIT = 1000
"""Events read from PostgreSQL at a time, for a stream that resumes far behind."""


class EventReader:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def tenant_of(self, object_id: UUID) -> str | None:
        return await self.session.scalar(select(ProcessingObject.tenant).where(ProcessingObject.id == object_id))

    async def latest(self, object_id: UUID) -> ObjectEvent | None:
        return await self.session.scalar(
            select(ObjectEvent).where(ObjectEvent.object_id == object_id).order_by(ObjectEvent.seq.desc()).limit(1)
        )

    async def after(self, object_id: UUID, seq: int) -> Sequence[ObjectEvent]:
        result = await self.session.scalars(
            select(ObjectEvent)
            .where(ObjectEvent.object_id == object_id, ObjectEvent.seq > seq)
            .order_by(ObjectEvent.seq)
            .limit(REPLAY_LIMIT)
        )
        return result.all()
