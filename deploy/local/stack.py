"""Runs the whole system on one machine: what `make run` and the end-to-end tests use.

    python -m deploy.local.stack            # everything at http://localhost:8000, Ctrl-C stops it all

It creates the database if needed and migrates it, starts an S3 server process (moto) when S3_ENDPOINT_URL is
not set and creates the bucket, then starts gateway, orchestrator, three executors and progress, each as its
own process the way a deployment would, and waits until every one reports healthy.
"""

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from deploy.local import s3_server

ROOT = Path(__file__).resolve().parents[2]


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/processing_db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "artifacts-bucket"
    s3_region: str = "us-east-1"
    aws_access_key_id: str = "test"
    aws_secret_access_key: str = "test"  # noqa: S105 - local S3 server credentials
    gateway_port: int = 8000
    orchestrator_port: int = 8001
    progress_port: int = 8002
    executor_base_port: int = 8101
    executors: int = Field(default=3, ge=1)
    orchestrators: int = Field(default=1, ge=1)
    gateways: int = Field(default=1, ge=1)
    """More than one: the others listen on free ports (`gateway_ports`), sharing Redis like a deployment's."""
    moto_port: int = 5010
    auth_enabled: bool = False
    """Off for `make run` on localhost (the development switch); AUTH_ENABLED=true turns it on."""
    stream_token_secret: str = Field(default_factory=lambda: secrets.token_urlsafe(32))
    """One per stack unless set: every gateway and progress process of the stack gets the same."""
    stream_token_ttl_seconds: int | None = None
    rate_limit_per_minute: int | None = None
    """Unset: the services' default with authentication on, no limit with it off."""
    rate_limit_anonymous_per_minute: int | None = None
    max_streams_per_key: int | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_url: str | None = None
    jwt_public_key: str | None = None


def listen_ports(count: int) -> list[int]:
    """`count` consecutive ports free to listen on, below the ephemeral range. A port the kernel hands out as free
    (bind to port 0) is an ephemeral one, and on a busy machine an outgoing connection can take it before the
    service binds it, which then fails to start; below the range, no outgoing connection ever gets one."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA dynamic range starts at 49152
        ephemeral_low = 49152
    # Clear of the well-known ports; lower only where the ephemeral range itself starts low.
    lowest = 10_000 if ephemeral_low - count > 10_000 else 1024
    for _ in range(1000):
        base = random.randrange(lowest, max(ephemeral_low - count, lowest + 1))  # noqa: S311 - not a secret
        if all(port_is_bindable(port) for port in range(base, base + count)):
            return list(range(base, base + count))
    msg = f"found no {count} consecutive free ports between {lowest} and the ephemeral range ({ephemeral_low})"
    raise RuntimeError(msg)


def free_port() -> int:
    return listen_ports(1)[0]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    health_url: str | None


@dataclass
class Stack:
    settings: StackSettings
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)
    gateway_ports: list[int] = field(default_factory=list)
    """Ports of the gateways after the first (`gateways` > 1)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    # --- start ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        try:
            if not self.settings.s3_endpoint_url:
                self._start_moto()
            # In a thread of its own: start() may be called from code that already runs an event loop (tests).
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self._prepare_backends()).result()
            self._migrate()
            self._start_services()
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_moto(self) -> None:
        port = self.settings.moto_port
        if not _port_free(port):
            port = free_port()
        self.settings.s3_endpoint_url = f"http://127.0.0.1:{port}"
        self._spawn("s3", s3_server.command("127.0.0.1", port), f"{self.settings.s3_endpoint_url}/moto-api/", {})

    def _env(self, **overrides: str) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "S3_ENDPOINT_URL": s.s3_endpoint_url or "",
            "S3_BUCKET": s.s3_bucket,
            "S3_REGION": s.s3_region,
            "AWS_ACCESS_KEY_ID": s.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": s.aws_secret_access_key,
            "PROGRESS_URL": f"http://127.0.0.1:{s.progress_port}",
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **self._auth_env(),
            **self.extra_env,
            **overrides,
        }

    def _auth_env(self) -> dict[str, str]:
        s = self.settings
        env = {"AUTH_ENABLED": str(s.auth_enabled).lower(), "STREAM_TOKEN_SECRET": s.stream_token_secret}
        rate = s.rate_limit_per_minute if s.rate_limit_per_minute is not None else (None if s.auth_enabled else 0)
        optional = {
            "RATE_LIMIT_PER_MINUTE": rate,
            "RATE_LIMIT_ANONYMOUS_PER_MINUTE": s.rate_limit_anonymous_per_minute,
            "MAX_STREAMS_PER_KEY": s.max_streams_per_key,
            "STREAM_TOKEN_TTL_SECONDS": s.stream_token_ttl_seconds,
            "JWT_ISSUER": s.jwt_issuer,
            "JWT_AUDIENCE": s.jwt_audience,
            "JWT_JWKS_URL": s.jwt_jwks_url,
            "JWT_PUBLIC_KEY": s.jwt_public_key,
        }
        env.update({name: str(value) for name, value in optional.items() if value is not None})
        return env

    async def _prepare_backends(self) -> None:
        url = make_url(self.settings.database_url)
        admin = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password, database="postgres"
        )
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
                await admin.execute(f'CREATE DATABASE "{url.database}"')
        finally:
            await admin.close()
        deadline = time.monotonic() + 20
        async with get_session().create_client(
            "s3",
            region_name=self.settings.s3_region,
            endpoint_url=self.settings.s3_endpoint_url,
            aws_access_key_id=self.settings.aws_access_key_id,
            aws_secret_access_key=self.settings.aws_secret_access_key,
        ) as s3:
            while True:
                try:
                    await s3.head_bucket(Bucket=self.settings.s3_bucket)
                    break
                except ClientError:
                    await s3.create_bucket(Bucket=self.settings.s3_bucket)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    def _migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=self._env(), check=True)

    def _start_services(self) -> None:
        s = self.settings
        self._service("progress", "progress", s.progress_port)
        for n in range(1, s.orchestrators + 1):
            port = s.orchestrator_port if n == 1 else free_port()
            self._service(f"orchestrator-{n}", "orchestrator", port)
        for n in range(1, s.executors + 1):
            self._service(f"executor-{n}", "executor", s.executor_base_port + n - 1)
        self._service("gateway", "gateway", s.gateway_port)
        for n in range(2, s.gateways + 1):
            port = free_port()
            self.gateway_ports.append(port)
            self._service(f"gateway-{n}", "gateway", port)

    def _service(self, name: str, module: str, port: int) -> None:
        env = self._env(PORT=str(port), INSTANCE_ID=name)
        self._spawn(name, [sys.executable, "-m", f"services.{module}"], f"http://127.0.0.1:{port}/health", env)

    def _spawn(self, name: str, argv: list[str], health_url: str | None, env: Mapping[str, str]) -> None:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        popen = subprocess.Popen(  # noqa: S603 - argv is ours
            argv, cwd=ROOT, env=dict(env) or None, stdout=output, stderr=subprocess.STDOUT if output else None
        )
        self.processes.append(Process(name, popen, health_url))

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [p for p in self.processes if p.health_url]
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for process in list(pending):
                    if process.popen.poll() is not None:
                        msg = f"{process.name} exited with code {process.popen.returncode} during start-up"
                        raise RuntimeError(msg)
                    try:
                        if client.get(process.health_url).status_code < 300:  # type: ignore[arg-type]
                            pending.remove(process)
                    except httpx.TransportError:
                        pass
                if pending and time.monotonic() > deadline:
                    msg = f"not healthy after {timeout}s: {', '.join(p.name for p in pending)}"
                    raise RuntimeError(msg)
                time.sleep(0.2)

    # --- control -------------------------------------------------------------------------------

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM everything (services first, the S3 server last), then SIGKILL what is still running."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in reversed(self.processes):
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        self.processes.clear()


def port_is_bindable(port: int) -> bool:
    """Whether a listener could bind this local port right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--executors", type=int, help="executor instances (default 3)")
    args = parser.parse_args()
    settings = StackSettings()
    if args.executors:
        settings.executors = args.executors
    stack = Stack(settings)
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        print(f"\nObject Processing API is up at http://localhost:{settings.gateway_port}  (docs: /docs)")
        print(f"S3 endpoint: {settings.s3_endpoint_url}, bucket: {settings.s3_bucket}. Ctrl-C stops everything.")
        if settings.auth_enabled:
            print("Authentication is on: create a key with `python -m services.gateway.keys create ...`.\n")
        else:
            print("Authentication is OFF (development): anyone who reaches this port has every scope.\n")
        while all(p.popen.poll() is None for p in stack.processes):
            time.sleep(0.5)
        dead = [p.name for p in stack.processes if p.popen.poll() is not None]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
