"""JWT bearer tokens from an external issuer, verified against its JWKS (or one configured public key)."""

import asyncio
from typing import Any

import jwt

from libs.common.auth.principal import Principal, Scope
from libs.common.domain import check_tenant
from libs.common.errors import UnauthorizedError
from libs.common.settings import AuthSettings


class JwtVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.algorithms = list(settings.jwt_algorithms)
        self.tenant_claim = settings.jwt_tenant_claim
        self.public_key = settings.jwt_public_key
        # PyJWKClient caches the key set; an unknown `kid` refetches it (a key rotation), at most once per call.
        self.jwks = jwt.PyJWKClient(settings.jwt_jwks_url, lifespan=300) if settings.jwt_jwks_url else None

    async def verify(self, token: str) -> Principal:
        key: Any = self.public_key
        try:
            if self.jwks is not None:
                key = (await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)).key
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("the bearer token has expired") from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError):
            raise UnauthorizedError("the bearer token is not valid") from None
        tenant = claims.get(self.tenant_claim)
        try:
            check_tenant(str(tenant))
        except ValueError:
            raise UnauthorizedError(f"the bearer token has no valid `{self.tenant_claim}` claim") from None
        return Principal(tenant=str(tenant), scopes=_scopes(claims), identity=f"jwt:{claims['sub']}")


def _scopes(claims: dict[str, Any]) -> frozenset[Scope]:
    raw: list[str] = []
    if isinstance(claims.get("scope"), str):
        raw += claims["scope"].split()
    if isinstance(claims.get("scopes"), list):
        raw += [str(s) for s in claims["scopes"]]
    known = {s.value for s in Scope}
    return frozenset(Scope(s) for s in raw if s in known)
