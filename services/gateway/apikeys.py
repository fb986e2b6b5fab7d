"""Creating, listing and revoking API keys: for the admin endpoints and the management command alike."""

from uuid import UUID, uuid4

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.auth import generate_api_key
from libs.common.db.models import ApiKey
from libs.common.errors import NotFoundError
from services.gateway.repository import ApiKeyRepository
from services.gateway.schemas import ApiKeyCreated, ApiKeyResponse

log = structlog.get_logger()


class ApiKeyService:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def create(self, tenant: str, scopes: list[str], name: str | None) -> ApiKeyCreated:
        new = generate_api_key()
        row = ApiKey(
            id=uuid4(), prefix=new.prefix, key_hash=new.key_hash, tenant=tenant, scopes=sorted(set(scopes)), name=name
        )
        async with self.sessionmaker.begin() as session:
            ApiKeyRepository(session).add(row)
            await session.flush()
            await session.refresh(row)
        # The prefix only: the key itself is never logged.
        log.info("api_key.created", key_id=str(row.id), prefix=row.prefix, tenant=tenant, scopes=row.scopes)
        return ApiKeyCreated(**_response(row).model_dump(), key=new.key)

    async def list(self, tenant: str | None) -> list[ApiKeyResponse]:
        async with self.sessionmaker() as session:
            return [_response(row) for row in await ApiKeyRepository(session).list(tenant)]

    async def revoke(self, id_or_prefix: str, tenant: str | None) -> ApiKeyResponse:
        """Revokes the key (at once: every request looks the key up). `tenant` None: any tenant's (the command)."""
        async with self.sessionmaker.begin() as session:
            keys = ApiKeyRepository(session)
            row = await keys.find(id_or_prefix, tenant)
            if row is None:
                raise NotFoundError(f"no API key {id_or_prefix}")
            await keys.revoke(row.id)
            await session.refresh(row)
        log.info("api_key.revoked", key_id=str(row.id), prefix=row.prefix, tenant=row.tenant)
        return _response(row)

    async def revoke_by_id(self, key_id: UUID, tenant: str) -> ApiKeyResponse:
        return await self.revoke(str(key_id), tenant)


def _response(row: ApiKey) -> ApiKeyResponse:
    return ApiKeyResponse(
        id=row.id,
        prefix=row.prefix,
        tenant=row.tenant,
        scopes=list(row.scopes),
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
