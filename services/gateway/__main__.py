from libs.common.logging import configure_logging
from libs.common.serve import serve
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings)
    serve(create_app(settings), settings, forwarded_allow_ips=settings.forwarded_allow_ips)


if __name__ == "__main__":
    main()
