from pydantic import Field

from libs.common.settings import AuthSettings, DatabaseSettings, ServiceSettings


class ProgressSettings(ServiceSettings, DatabaseSettings, AuthSettings):
    service_name: str = "progress"
    port: int = Field(default=8002, ge=1, le=65535)
    sse_ping_seconds: int = Field(default=15, ge=1, le=300)
    sse_retry_ms: int = Field(default=2000, ge=100)
    """Reconnection delay suggested to clients (the SSE `retry:` field)."""
    subscriber_queue_size: int = Field(default=256, ge=1)
    """Events buffered per slow subscriber; past it the stream is closed and the client resumes with Last-Event-ID."""
    events_read_linger_ms: int = Field(default=20, ge=0, le=1000)
    """After a read of `objects:events` that returned events, wait this long before the next, so that a busy stream
    is read in fewer, larger batches (each read costs about as much CPU as its events); a lone event is delivered at
    once. 0: read again at once."""
    database_pool_size: int = Field(default=5, ge=1)
    max_streams_per_key: int = Field(default=20, ge=0)
    """Open SSE streams of one API key (or JWT subject) at once, across every instance; past it, 429. 0: no cap.
    Not applied when authentication is off (there is no key to count by)."""
