"""Stream tokens: a browser's `EventSource` cannot send headers, so the SSE URL carries `?token=`, a short-lived
HS256 JWT signed with STREAM_TOKEN_SECRET, scoped to one object of one tenant and naming the key it was made with."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt

from libs.common.errors import UnauthorizedError

AUDIENCE = "opa:stream"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class StreamClaims:
    object_id: UUID
    tenant: str
    identity: str | None
    key_id: str | None


class StreamTokens:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self.secret = secret
        self.ttl_seconds = ttl_seconds

    def sign(
        self, object_id: UUID, tenant: str, identity: str | None, key_id: str | None, now: datetime | None = None
    ) -> tuple[str, datetime]:
        issued = now or datetime.now(UTC)
        expires = issued + timedelta(seconds=self.ttl_seconds)
        claims = {
            "sub": str(object_id),
            "aud": AUDIENCE,
            "tenant": tenant,
            "idn": identity,
            "kid": key_id,
            "iat": issued,
            "exp": expires,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), expires.replace(microsecond=0)

    def verify(self, token: str, object_id: UUID) -> StreamClaims:
        """The token's claims; UnauthorizedError when it is expired, badly signed, or for another object."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["sub", "exp", "aud", "tenant"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("the stream token has expired; request a new one") from None
        except jwt.InvalidTokenError:
            raise UnauthorizedError("the stream token is not valid") from None
        if claims["sub"] != str(object_id):
            raise UnauthorizedError("the stream token is for another object")
        return StreamClaims(
            object_id=object_id, tenant=str(claims["tenant"]), identity=claims.get("idn"), key_id=claims.get("kid")
        )
