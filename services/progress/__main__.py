import uvicorn

from libs.common.logging import configure_logging
from services.progress.app import create_app
from services.progress.settings import ProgressSettings


def main() -> None:
    settings = ProgressSettings()
    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
    )


if __name__ == "__main__":
    main()
