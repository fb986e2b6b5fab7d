"""A TCP proxy in front of the S3 server that the suite can switch off: S3 becomes unreachable at will.

It runs as a process of its own (`python -m tests.faults.proxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT`), so that
relaying megabytes for three executors never competes with the test process for its interpreter lock, and the
test's pauses never stall it. SIGUSR1 blocks it: the listening socket closes (new connections are refused) and
every open connection is aborted (requests in flight fail midway). SIGUSR2 listens again on the same port.
"""

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 256 * 1024


class _Relay:
    def __init__(self, listen_port: int, upstream: tuple[str, int]) -> None:
        self.listen_port = listen_port
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(self.block()))
        loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(self.listen()))
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        await self.listen()
        await self.stopping.wait()
        await self.block()

    def blocked(self) -> bool:
        return self.server is None

    async def listen(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.listen_port, reuse_address=True)

    async def block(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.blocked():
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        if self.blocked():  # while connecting
            client_writer.transport.abort()
            upstream_writer.transport.abort()
            return
        self.writers.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(self.pipe(client_reader, upstream_writer), self.pipe(upstream_reader, client_writer))
        finally:
            for writer in (client_writer, upstream_writer):
                self.writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            writer.transport.abort()


class TcpProxy:
    """The proxy process, seen from the test: `url` for the services, `block()` and `unblock()` for the fault."""

    def __init__(self, listen_port: int, upstream_host: str, upstream_port: int) -> None:
        self.listen_port = listen_port
        self.upstream = (upstream_host, upstream_port)
        self.popen: subprocess.Popen[bytes] | None = None
        self.blocked = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> None:
        root = Path(__file__).resolve().parents[2]
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.proxy", str(self.listen_port), *map(str, self.upstream)], cwd=root
        )
        self._wait(listening=True)

    def block(self) -> None:
        self._signal(signal.SIGUSR1)
        self.blocked = True
        self._wait(listening=False)

    def unblock(self) -> None:
        self._signal(signal.SIGUSR2)
        self.blocked = False
        self._wait(listening=True)

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def _signal(self, signum: int) -> None:
        if self.popen is None or self.popen.poll() is not None:
            msg = "the S3 proxy is not running"
            raise RuntimeError(msg)
        self.popen.send_signal(signum)

    def _wait(self, listening: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as sock:
                if (sock.connect_ex(("127.0.0.1", self.listen_port)) == 0) == listening:
                    return
            if self.popen is not None and self.popen.poll() is not None:
                msg = f"the S3 proxy exited with {self.popen.returncode}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"the S3 proxy did not {'listen' if listening else 'stop listening'} within {timeout}s"
                raise RuntimeError(msg)
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_host")
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    asyncio.run(_Relay(args.listen_port, (args.upstream_host, args.upstream_port)).run())


if __name__ == "__main__":
    main()
