from libs.common.logging import configure_logging
from libs.common.serve import serve
from services.executor.app import create_app
from services.executor.settings import ExecutorSettings


def main() -> None:
    settings = ExecutorSettings()
    configure_logging(settings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
