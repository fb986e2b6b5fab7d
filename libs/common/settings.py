"""Settings every service shares. Each service subclasses these and builds its own once, in __main__."""

import socket
from typing import Literal

from pydantic import Field, PostgresDsn, RedisDsn, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Settings(BaseSettings):
    # Every settings class and mixin carries the config: with multiple inheritance, pydantic takes the config of
    # the last base, so a mixin without it would silently turn `.env` reading off.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


class ServiceSettings(_Settings):
    service_name: str
    instance_id: str = Field(default_factory=socket.gethostname)
    redis_url: RedisDsn = RedisDsn("redis://127.0.0.1:6379/0")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "console"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    keep_alive_seconds: int = Field(default=75, ge=1)
    """How long an idle HTTP connection is kept open. Longer than the pools of common clients (httpx and aiohttp
    drop idle connections after 5 and 15 s), the gateway's proxy to progress included: when the server closes
    first, a request sent on the connection as it closes fails (uvicorn's own default, 5 s, races httpx's)."""
    # Streams are capped on every XADD (approximate MAXLEN): entries beyond this are old, acknowledged history.
    stream_maxlen: int = Field(default=100_000, ge=1_000)
    claim_idle_ms: int = Field(default=15_000, ge=100)
    """An entry pending this long without a heartbeat is taken over by another consumer of its group."""
    max_deliveries: int = Field(default=5, ge=1)
    """Deliveries of one entry before it is dead-lettered (and its object failed)."""
    reclaim_interval_seconds: float = Field(default=2.0, gt=0)
    graceful_timeout_seconds: float = Field(default=30.0, gt=0)


class DatabaseSettings(_Settings):
    database_url: PostgresDsn = PostgresDsn("postgresql+asyncpg://postgres@127.0.0.1:5432/processing_db")
    database_pool_size: int = Field(default=10, ge=1)


class S3Settings(_Settings):
    s3_bucket: str = "artifacts-bucket"
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    aws_access_key_id: SecretStr = SecretStr("test")
    aws_secret_access_key: SecretStr = SecretStr("test")
    s3_presign_expiry_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)


class ConcurrencySettings(_Settings):
    max_parallel_workers: int = Field(default=3, ge=1, le=1000)


class AuthSettings(_Settings):
    """Authentication of HTTP clients: read by the gateway and the progress service alike (both must agree)."""

    auth_enabled: bool = True
    """Off only for development on localhost (`make run` turns it off): every request is then the default tenant
    with every scope."""
    stream_token_secret: SecretStr | None = None
    """HMAC key of the signed SSE stream tokens; required when authentication is on, the same on every gateway and
    progress instance. At least 32 characters."""
    stream_token_ttl_seconds: int = Field(default=300, ge=1, le=24 * 3600)
    jwt_issuer: str | None = None
    """Set it (with JWT_JWKS_URL or JWT_PUBLIC_KEY) to accept JWT bearer tokens from that issuer; unset: API keys
    only."""
    jwt_audience: str | None = None
    jwt_jwks_url: str | None = None
    jwt_public_key: str | None = None
    """A PEM public key, instead of a JWKS URL."""
    jwt_tenant_claim: str = "tenant"
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"])

    @model_validator(mode="after")
    def _consistent_auth(self) -> "AuthSettings":
        if self.auth_enabled:
            secret = self.stream_token_secret.get_secret_value() if self.stream_token_secret else ""
            if len(secret) < 32:
                msg = (
                    "STREAM_TOKEN_SECRET (32 characters or more, the same on every gateway and progress instance) is "
                    "required when AUTH_ENABLED is true; generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
                raise ValueError(msg)
        if self.jwt_issuer and not (self.jwt_jwks_url or self.jwt_public_key):
            msg = "JWT_ISSUER needs JWT_JWKS_URL or JWT_PUBLIC_KEY to verify the tokens"
            raise ValueError(msg)
        if any(alg.upper().startswith("HS") or alg.lower() == "none" for alg in self.jwt_algorithms):
            msg = "JWT_ALGORITHMS may name only public-key algorithms (RS*, ES*, PS*, EdDSA)"
            raise ValueError(msg)
        return self


class RateLimitSettings(_Settings):
    rate_limit_per_minute: int = Field(default=600, ge=0)
    """Requests per minute of one API key (or JWT subject), across every gateway instance; 0: no limit."""
    rate_limit_anonymous_per_minute: int = Field(default=60, ge=0)
    """Requests per minute from one client address without valid credentials; 0: no limit."""
