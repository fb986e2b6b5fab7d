from pydantic import Field

from libs.common.settings import ConcurrencySettings, DatabaseSettings, ServiceSettings


class OrchestratorSettings(ServiceSettings, DatabaseSettings, ConcurrencySettings):
    service_name: str = "orchestrator"
    port: int = Field(default=8001, ge=1, le=65535)
    # Safety nets behind the event-driven paths: admission after every freed slot, outbox relay after every commit.
    admission_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_sweep_seconds: float = Field(default=1.0, gt=0)
    stream_retention_seconds: int = Field(default=3600, ge=0)
    """History kept on streams beyond what consumers still need (the public event stream keeps exactly this)."""
    consumer_retention_seconds: int = Field(default=86400, gt=0)
    """A consumer (a service instance) that holds nothing and has not read for this long is removed from its group."""
    maintenance_interval_seconds: float = Field(default=30.0, gt=0)
    redispatch_after_seconds: float = Field(default=60.0, gt=0)
    """A running operation handed over this long ago, with no executor holding it and no command for it left in
    Redis, is sent again from PostgreSQL (with the object's operations after it)."""
    redispatch_check_seconds: float = Field(default=10.0, gt=0)
