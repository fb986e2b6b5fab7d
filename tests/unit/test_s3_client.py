"""The shared S3 clients: botocore's asks an endpoint to accept a body first (`Expect: 100-continue`) only for large
bodies; the lean one takes its proxy from the environment, and trusts the CA bundle the AWS configuration names, as
botocore's does.

A recording HTTP endpoint stands in for S3: the test is about the request the client sends, not about storage."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from libs.common.s3 import EXPECT_CONTINUE_MIN_BYTES, _environment_proxy, s3_client, s3_objects
from libs.common.settings import S3Settings


class Recorder:
    """Answers every request 200 (after a "100 Continue" when asked) and keeps each request's head."""

    def __init__(self) -> None:
        self.heads: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := (await reader.readuntil(b"\r\n\r\n")).decode():
                self.heads.append(head)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:] if line)
                }
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder, f"http://127.0.0.1:{port}"


@pytest.fixture
async def https_recorder(tmp_path: Path) -> AsyncIterator[tuple[Recorder, str, Path]]:
    """The recorder over HTTPS, its certificate issued by a CA of the test's own: the endpoint, and that CA's file."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    recorder = Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder, f"https://127.0.0.1:{port}", ca_file


@pytest.mark.parametrize("variable", ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"])
async def test_both_clients_trust_the_ca_bundle_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, https_recorder: tuple[Recorder, str, Path], variable: str
) -> None:
    recording, endpoint, ca_file = https_recorder
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no ca_bundle from the developer's own ~/.aws/config
    monkeypatch.setenv(variable, str(ca_file))
    settings = S3Settings(s3_endpoint_url=endpoint)
    async with s3_client(settings) as client:
        await client.put_object(Bucket="bucket", Key="botocore", Body=b"x")
    async with s3_objects(settings) as objects, await objects.put("bucket/lean", b"x") as response:
        assert response.status == 200
    assert [head.split(" ")[1] for head in recording.heads] == ["/bucket/botocore", "/bucket/lean"]


async def test_without_the_bundle_the_lean_client_refuses_an_unknown_ca(
    monkeypatch: pytest.MonkeyPatch, https_recorder: tuple[Recorder, str, Path]
) -> None:
    recording, endpoint, _ = https_recorder
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no ca_bundle from the developer's own ~/.aws/config
    async with s3_objects(S3Settings(s3_endpoint_url=endpoint)) as objects:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await objects.put("bucket/lean", b"x")
    assert recording.heads == []


@pytest.mark.parametrize(("size", "expects"), [(0, False), (1024, False), (EXPECT_CONTINUE_MIN_BYTES, True)])
async def test_only_a_large_body_waits_for_100_continue(
    recorder: tuple[Recorder, str], size: int, expects: bool
) -> None:
    recording, endpoint = recorder
    async with s3_client(S3Settings(s3_endpoint_url=endpoint)) as client:
        await client.put_object(Bucket="bucket", Key="key", Body=b"x" * size)
    (head,) = recording.heads
    assert head.startswith("PUT /bucket/key ")
    assert ("expect: 100-continue" in head.lower()) is expects


@pytest.mark.parametrize(
    ("environment", "url", "proxy"),
    [
        ({}, "http://s3.example.com", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://s3.example.com", "http://proxy:3128"),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://s3.example.com", None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"}, "https://s3.example.com", None),
        ({"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "minio:9000"}, "http://minio:9000", None),
        ({"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "minio:9000"}, "http://minio:9001", "http://proxy:3128"),
    ],
)
def test_the_lean_client_takes_its_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, proxy: str | None
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert _environment_proxy(url) == proxy
