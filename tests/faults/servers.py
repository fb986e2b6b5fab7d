"""PostgreSQL and Redis server processes of the fault suite's own, so that killing them touches nothing else."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_sync

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
"""PostgreSQL refuses to run as root: its processes run as this unprivileged user."""


def _as_pg_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *argv]
    return argv


class PostgresServer:
    """A throw-away cluster (initdb into a temporary folder, trust auth) on 127.0.0.1:`port`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="opa-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """For asyncpg: the server's maintenance database."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "--auth=trust", "-U", PG_USER, "-E", "UTF8", "--no-sync"]
        )

    def start(self) -> None:
        options = " ".join(
            (
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-c unix_socket_directories={self.root}",
                # fsync=off only skips flushing the OS cache: a crashed or killed server loses nothing, a crashed
                # machine would. synchronous_commit stays on: a commit acknowledged is a commit kept.
                "-c fsync=off",
                "-c max_connections=200",
            )
        )
        self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def running(self) -> bool:
        status = subprocess.run(
            _as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]), capture_output=True, check=False
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(_as_pg_user(argv), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            msg = f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            raise RuntimeError(msg)


class RedisServer:
    """redis-server on 127.0.0.1:`port`, keeping nothing on disk: a restart loses every key."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis_sync.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis_sync.RedisError:
                    pass
                if self.popen.poll() is not None:
                    msg = f"redis-server exited with {self.popen.returncode}; see {self.log_path}"
                    raise RuntimeError(msg)
                if time.monotonic() > deadline:
                    msg = f"redis-server on port {self.port} did not answer within {timeout}s"
                    raise RuntimeError(msg)
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the data is gone with the process."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def flushall(self) -> None:
        client = redis_sync.Redis(host="127.0.0.1", port=self.port)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
