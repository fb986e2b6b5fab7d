from libs.common.logging import configure_logging
from libs.common.serve import serve
from services.progress.app import create_app
from services.progress.settings import ProgressSettings


def main() -> None:
    settings = ProgressSettings()
    configure_logging(settings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
