from pydantic import AnyHttpUrl, Field

from libs.common.settings import (
    AuthSettings,
    ConcurrencySettings,
    DatabaseSettings,
    RateLimitSettings,
    ServiceSettings,
)


class GatewaySettings(ServiceSettings, DatabaseSettings, ConcurrencySettings, AuthSettings, RateLimitSettings):
    service_name: str = "gateway"
    port: int = Field(default=8000, ge=1, le=65535)
    progress_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8002")
    """Where the progress service listens; the gateway proxies SSE streams to it."""
    command_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a request waits for the orchestrator to confirm a command before answering 503."""
    max_in_flight_requests: int = Field(default=128, ge=1)
    """Requests this instance works on at once (SSE streams aside); beyond it, 503 + Retry-After at once."""
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """Any request body over this is refused (413) before it is read; keep it above MAX_PAYLOAD_BYTES."""
    max_operations: int = Field(default=32, ge=1, le=32)
    """Operations per object (each operation name at most once)."""
    max_options_bytes: int = Field(default=64 * 1024, ge=256)
    """`options` of one request, as compact JSON."""
    max_metadata_bytes: int = Field(default=16 * 1024, ge=256)
    """`metadata` of one request, as compact JSON."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API from a browser (CORS); none by default. `["*"]` allows any."""
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies trusted to name the client address in X-Forwarded-For (it keys the anonymous rate limit); a
    comma-separated list, or `*` when only a proxy can reach the gateway (docker-compose)."""
