from pydantic import Field

from libs.common.settings import ConcurrencySettings, DatabaseSettings, ServiceSettings


class OrchestratorSettings(ServiceSettings, DatabaseSettings, ConcurrencySettings):
    service_name: str = "orchestrator"
    port: int = Field(default=8001, ge=1, le=65535)
    # Safety nets behind the event-driven paths: admission after every freed slot, outbox relay after every commit.
    admission_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_sweep_seconds: float = Field(default=1.0, gt=0)
