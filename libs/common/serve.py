"""How every service runs its ASGI app: one place for the server settings they share."""

from typing import Any

import uvicorn

from libs.common.settings import ServiceSettings


def serve(app: Any, settings: ServiceSettings, **options: Any) -> None:
    """Run `app` with uvicorn on the service's host and port. Logging is ours (structlog), and idle connections are
    kept `keep_alive_seconds`, longer than clients' pool expiry, so a client never reuses one just as it closes."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        **options,
    )
