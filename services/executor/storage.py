"""S3 access for operations. botocore types and error codes stay in this module."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from types_aiobotocore_s3 import S3Client

from libs.common.s3 import parse_s3_url

log = structlog.get_logger()
T = TypeVar("T")

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})


class ObjectMissingError(LookupError):
    """The S3 object does not exist."""


class StorageUnavailableError(RuntimeError):
    """S3 kept failing transiently through every attempt."""


class Storage:
    def __init__(
        self, client: S3Client, bucket: str, attempts: int, backoff_seconds: float, presign_expiry: int
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.presign_expiry = presign_expiry

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def get(self, url: str, max_bytes: int) -> tuple[bytes, str | None]:
        bucket, key = parse_s3_url(url)

        async def call() -> tuple[bytes, str | None]:
            response = await self.client.get_object(Bucket=bucket, Key=key)
            if response["ContentLength"] > max_bytes:
                msg = f"{url} is {response['ContentLength']} bytes; the limit is {max_bytes}"
                raise ValueError(msg)
            async with response["Body"] as body:
                return await body.read(), response.get("ContentType")

        return await self._retrying(call, url)

    async def get_json_if_exists(self, key: str) -> bytes | None:
        try:
            raw, _ = await self.get(self.url(key), max_bytes=16 * 1024 * 1024)
        except ObjectMissingError:
            return None
        return raw

    async def put(self, key: str, body: bytes, content_type: str, metadata: dict[str, str] | None = None) -> str:
        await self._retrying(
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata or {}
            ),
            key,
        )
        return self.url(key)

    async def check(self) -> None:
        """Raises when the bucket cannot be reached (health checks)."""
        await self.client.head_bucket(Bucket=self.bucket)

    async def presign(self, key: str) -> str:
        return await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_expiry
        )

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                if code in _MISSING_CODES:
                    raise ObjectMissingError(what) from None
                if status < 500 and code not in ("SlowDown", "RequestTimeout", "Throttling"):
                    raise
                error: Any = exc
            except ParamValidationError as exc:  # refused before sending (e.g. a bad bucket name): not transient
                raise ValueError(str(exc)) from None
            except (TimeoutError, BotoCoreError, OSError) as exc:
                error = exc
            if attempt == self.attempts:
                msg = f"S3 unavailable after {attempt} attempts ({type(error).__name__}: {error})"
                raise StorageUnavailableError(msg) from error
            delay = self.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
            log.warning("storage.retry", target=what, attempt=attempt, delay=round(delay, 3), error=str(error)[:200])
            await asyncio.sleep(delay)
        raise AssertionError  # unreachable: the loop returns or raises
