from pydantic import Field

from libs.common.settings import S3Settings, ServiceSettings


class ExecutorSettings(ServiceSettings, S3Settings):
    service_name: str = "executor"
    port: int = Field(default=8101, ge=1, le=65535)
    storage_attempts: int = Field(default=4, ge=1, le=20)
    """Attempts at an S3 call that fails transiently (5xx, timeout, connection) before the operation fails."""
    storage_backoff_seconds: float = Field(default=0.5, gt=0)
    operation_timeout_seconds: float = Field(default=900.0, gt=0)
    """An operation running longer fails the object (\"timed out\")."""
    started_report_delay_ms: int = Field(default=250, ge=0)
    """An operation still running after this long is reported started (`operation_started`); one that ends sooner
    reports only its result. 0 reports every start at once."""
    max_document_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest JSON document that is not an array (read whole); arrays, NDJSON and CSV stream at any size."""
