"""A local S3 endpoint for development, the tests and the benchmark: moto's S3, served over kept-alive connections.

    python -m deploy.local.s3_server [--host 127.0.0.1] [--port 5000] [--threads 8]

moto's own `moto_server` runs werkzeug's development server, which answers every request with `Connection: close`:
each S3 request then paid a TCP connect on the client and a new thread on the server, which real S3 endpoints
(AWS, MinIO) do not charge. waitress serves the same moto application with HTTP/1.1 keep-alive. (uvicorn with
a2wsgi was tried too: it kept connections alive but its thread hand-off made it no faster than werkzeug.)
"""

import argparse
import logging
import sys
from pathlib import Path

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server


class _Channel(HTTPChannel):
    def send_continue(self) -> None:
        # waitress marks the request incomplete after its "100 Continue", to wait for the body; a request that has
        # none (an empty PUT: botocore sends `Expect: 100-continue` with `Content-Length: 0`) then never completes.
        request = self.request
        completed = request is not None and request.completed
        super().send_continue()
        if request is not None:
            request.completed = completed


def command(host: str, port: int) -> list[str]:
    """The command line that starts this server (it needs no working directory)."""
    return [sys.executable, str(Path(__file__).resolve()), "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8, help="requests served at once")
    args = parser.parse_args(argv)
    app = DomainDispatcherApplication(create_backend_app)
    # Kept-alive connections count against waitress's connection limit (100 by default): the benchmark's raised cap
    # and the test suite's stacks keep more than that open at once.
    server = create_server(
        app, host=args.host, port=args.port, threads=args.threads, connection_limit=1000, ident="moto"
    )
    if not isinstance(server, BaseWSGIServer):  # one host and port make one server, not several
        raise TypeError(f"unexpected waitress server {server!r}")
    server.channel_class = _Channel
    # Under a burst, waitress warns of its task queue's depth: requests waiting for a thread, as they should.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server.run()


if __name__ == "__main__":
    main()
