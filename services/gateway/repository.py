"""Reads of the object tables. The gateway never writes them: the orchestrator owns all state."""

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db.models import ProcessingObject
from libs.common.domain import ObjectState


class ObjectReader:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, object_id: UUID) -> ProcessingObject | None:
        return await self.session.get(ProcessingObject, object_id)

    async def get_by_identifier(self, identifier: str) -> ProcessingObject | None:
        return await self.session.scalar(select(ProcessingObject).where(ProcessingObject.identifier == identifier))

    async def page(
        self, state: ObjectState | None, after: tuple[datetime, UUID] | None, limit: int
    ) -> Sequence[ProcessingObject]:
        query = select(ProcessingObject).order_by(ProcessingObject.created_at, ProcessingObject.id).limit(limit)
        if state is not None:
            query = query.where(ProcessingObject.state == state.value)
        if after is not None:
            query = query.where(tuple_(ProcessingObject.created_at, ProcessingObject.id) > tuple_(*after))
        return (await self.session.scalars(query)).all()

    async def count_by_state(self) -> dict[ObjectState, int]:
        rows = await self.session.execute(
            select(ProcessingObject.state, func.count())
            .where(ProcessingObject.state.in_([ObjectState.QUEUED.value, ObjectState.PROCESSING.value]))
            .group_by(ProcessingObject.state)
        )
        return {ObjectState(state): count for state, count in rows.tuples()}
