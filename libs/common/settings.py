"""Settings every service shares. Each service subclasses these and builds its own once, in __main__."""

import socket
from typing import Literal

from pydantic import Field, PostgresDsn, RedisDsn, SecretStr
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
