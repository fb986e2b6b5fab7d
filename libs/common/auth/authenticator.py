"""Turns the credentials of a request into a Principal, or refuses them (401)."""

import hmac
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.auth.apikeys import hash_api_key, looks_like_api_key, parse_api_key
from libs.common.auth.bearer import JwtVerifier
from libs.common.auth.principal import ANONYMOUS, Principal, Scope
from libs.common.auth.tokens import StreamTokens
from libs.common.db.models import ApiKey
from libs.common.errors import UnauthorizedError
from libs.common.settings import AuthSettings

log = structlog.get_logger()

LAST_USED_RESOLUTION = timedelta(minutes=1)
INVALID_KEY = "the API key is not valid (unknown or revoked)"
KNOWN_SCOPES = {scope.value for scope in Scope}
MISSING = "credentials are required: send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class Authenticator:
    def __init__(self, settings: AuthSettings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.enabled = settings.auth_enabled
        self.sessionmaker = sessionmaker
        secret = settings.stream_token_secret.get_secret_value() if settings.stream_token_secret else ""
        self.stream_tokens = StreamTokens(secret, settings.stream_token_ttl_seconds) if secret else None
        self.jwt = JwtVerifier(settings) if settings.jwt_issuer else None

    @staticmethod
    def credential(authorization: str | None, api_key: str | None) -> str | None:
        """The credential a request carries: `X-API-Key`, else a bearer `Authorization`."""
        if api_key:
            return api_key.strip()
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return None

    async def authenticate(self, credential: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if credential is None:
            raise UnauthorizedError(MISSING)
        if looks_like_api_key(credential):
            return await self._api_key(credential)
        if self.jwt is not None and credential.count(".") == 2:
            return await self.jwt.verify(credential)
        raise UnauthorizedError(INVALID_KEY)

    async def authenticate_stream(self, credential: str | None, token: str | None, object_id: UUID) -> Principal:
        """A stream request: a stream token for this object (`?token=`), or any credential with the read scope."""
        if not self.enabled:
            return ANONYMOUS
        if token is None or credential is not None:
            return await self.authenticate(credential)
        if self.stream_tokens is None:  # pragma: no cover - settings refuse auth without a secret
            raise UnauthorizedError("stream tokens are not configured")
        claims = self.stream_tokens.verify(token, object_id)
        if claims.key_id is not None and not await self._key_active(claims.key_id):
            raise UnauthorizedError("the API key this stream token was made with has been revoked")
        return Principal(
            tenant=claims.tenant, scopes=frozenset({Scope.READ}), identity=claims.identity, key_id=claims.key_id
        )

    async def _api_key(self, key: str) -> Principal:
        prefix = parse_api_key(key)
        if prefix is None:
            raise UnauthorizedError(INVALID_KEY)
        async with self.sessionmaker() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        # Compare in constant time even when the prefix is unknown, so timing does not tell which prefixes exist.
        expected = row.key_hash if row is not None else "0" * 64
        if not hmac.compare_digest(expected, hash_api_key(key)) or row is None or row.revoked_at is not None:
            raise UnauthorizedError(INVALID_KEY)
        if row.last_used_at is None or row.last_used_at < datetime.now(UTC) - LAST_USED_RESOLUTION:
            await self._mark_used(row.id)
        scopes = frozenset(Scope(s) for s in row.scopes if s in KNOWN_SCOPES)
        return Principal(tenant=row.tenant, scopes=scopes, identity=f"key:{row.id}", key_id=str(row.id))

    async def _mark_used(self, key_id: UUID) -> None:
        """Record that the key was used (listings show it, to tell keys still in use from forgotten ones). At most
        once per LAST_USED_RESOLUTION per key, across instances: a write per request would cost every request. A
        row that another request is writing is skipped, not waited for (SKIP LOCKED): that write records this use."""
        stale = (
            select(ApiKey.id)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < func.now() - LAST_USED_RESOLUTION),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        try:
            async with self.sessionmaker.begin() as session:
                await session.execute(update(ApiKey).where(ApiKey.id == stale).values(last_used_at=func.now()))
        except SQLAlchemyError:  # a bookkeeping write never fails the request it describes
            log.warning("api_key.last_used_not_recorded", key_id=str(key_id), exc_info=True)

    async def _key_active(self, key_id: str) -> bool:
        try:
            uuid = UUID(key_id)
        except ValueError:
            return False
        async with self.sessionmaker() as session:
            row = (await session.execute(select(ApiKey.revoked_at).where(ApiKey.id == uuid))).first()
        return row is not None and row.revoked_at is None
