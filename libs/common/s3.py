"""One long-lived S3 client per process, and the helpers around s3:// URLs."""

import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp_s3_client import S3Client as ObjectClient
from aiohttp_s3_client.credentials import StaticCredentials
from botocore.handlers import add_expect_header
from botocore.utils import determine_content_length
from types_aiobotocore_s3 import S3Client

from libs.common.settings import S3Settings


@asynccontextmanager
async def s3_client(settings: S3Settings, max_pool_connections: int = 10) -> AsyncIterator[S3Client]:
    config = AioConfig(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        # Checksums on every request cost CPU and are not needed against endpoints that do not ask for them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with get_session().create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id.get_secret_value(),
        aws_secret_access_key=settings.aws_secret_access_key.get_secret_value(),
        config=config,
    ) as client:
        expect_continue_for_large_bodies_only(client.meta.events)
        yield client


@asynccontextmanager
async def s3_objects(settings: S3Settings, max_connections: int = 10) -> AsyncIterator[ObjectClient]:
    """A lean client for single-request object PUTs and GETs (aiohttp-s3-client: a signed aiohttp request).

    botocore spends about 1 ms of CPU on each request (parameter validation, endpoint rules, event hooks, the
    User-Agent rebuilt every time, response parsing); this client, about 0.35 ms on the same small PUT. An executor
    makes one for every artifact and output it writes, so it uses this one for them and botocore's for the rest
    (multipart uploads, presigned URLs); the executors' health check probes both. Path-style addressing, as botocore
    uses with an endpoint URL."""
    endpoint = settings.s3_endpoint_url or f"https://s3.{settings.s3_region}.amazonaws.com"
    credentials = StaticCredentials(
        access_key_id=settings.aws_access_key_id.get_secret_value(),
        secret_access_key=settings.aws_secret_access_key.get_secret_value(),
        region=settings.s3_region,
    )
    # The same limits as s3_client's: connect_timeout 5 s, read_timeout 30 s, a pool of max_connections.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
    connector = aiohttp.TCPConnector(limit=max_connections, ssl=_verification())
    # HTTP(S)_PROXY and NO_PROXY apply, as they do to botocore's, looked up once: with trust_env, aiohttp looks them
    # up (and reads ~/.netrc) on every request, which doubled the CPU of a small PUT.
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, proxy=_environment_proxy(endpoint)
    ) as session:
        yield ObjectClient(session, endpoint, credentials=credentials)


def _verification() -> ssl.SSLContext | bool:
    """How the lean client checks an HTTPS endpoint's certificate: against the CA bundle named, as botocore looks
    for one, by AWS_CA_BUNDLE, `ca_bundle` in ~/.aws/config, or REQUESTS_CA_BUNDLE, and only it (an endpoint with a
    private CA: MinIO, Ceph, a proxy); with none named, against the system's CAs (botocore: certifi's)."""
    ca_bundle = get_session().get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE")
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle and ca_bundle.strip() else True


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), if any."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return None
    # With the port, as botocore asks: NO_PROXY may name `host:port`.
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(parts.scheme)


EXPECT_CONTINUE_MIN_BYTES = 2 * 1024 * 1024
"""A PUT asks the endpoint to accept its body first (`Expect: 100-continue`) only from this size on, as the AWS SDKs
for Kotlin and Go do by default (`continueHeaderThresholdBytes`). botocore asks for every PutObject and UploadPart
body: a small artifact then waited a round trip for the "100 Continue" before it was sent, which cost more than
sending it."""


def expect_continue_for_large_bodies_only(events: Any) -> None:
    """Make a client (aiobotocore's or boto3's: `client.meta.events`) ask for 100-continue only from
    EXPECT_CONTINUE_MIN_BYTES on."""
    events.unregister("before-call.s3", add_expect_header)
    events.register("before-call.s3", _expect_continue_for_large_bodies)


def _expect_continue_for_large_bodies(model: Any, params: dict[str, Any], **_: Any) -> None:
    if model.http.get("method") not in ("PUT", "POST") or params.get("body") is None:
        return
    length = determine_content_length(params["body"])
    if length is None or length >= EXPECT_CONTINUE_MIN_BYTES:
        params["headers"]["Expect"] = "100-continue"


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). Raises ValueError on anything else."""
    if not url.startswith("s3://"):
        msg = f"not an s3:// URL: {url!r}"
        raise ValueError(msg)
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        msg = f"an s3:// URL needs a bucket and a key: {url!r}"
        raise ValueError(msg)
    return bucket, key
