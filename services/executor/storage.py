"""S3 access for operations. botocore types and error codes stay in this module."""

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import NamedTuple, TypeVar

import aiohttp
import structlog
from aiohttp_s3_client import S3Client as ObjectClient
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from botocore.handlers import validate_bucket_name
from types_aiobotocore_s3 import S3Client
from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

from libs.common.retry import backoff_delay
from libs.common.s3 import EXPECT_CONTINUE_MIN_BYTES, parse_s3_url

log = structlog.get_logger()
T = TypeVar("T")

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "Throttling"})
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")

ERROR_BODY_BYTES = 64 * 1024
"""Of an error answer's body, the most read to find its S3 error code."""
LEAN_REQUESTS_PER_ATTEMPT = 3
"""Requests the lean client makes in one attempt, as botocore's client does (its standard retry mode, with
`max_attempts` 3 in libs/common/s3.py): STORAGE_ATTEMPTS means the same on both paths."""


class ObjectMissingError(LookupError):
    """The S3 object does not exist."""


class StorageUnavailableError(RuntimeError):
    """S3 kept failing transiently through every attempt."""


class StorageRefusedError(ValueError):
    """S3 refused the request for good (access denied, invalid request): retrying cannot help."""


HANDOFF_MAX_BYTES = 1024 * 1024
"""An output this small, just written, is kept in memory for a moment: the next operation of the chain reads it
from there instead of S3 (one GET less per output, for the executor and the S3 endpoint alike)."""
HANDOFF_SECONDS = 30.0
"""How long a kept output is read from memory: long enough for the chain's next operation to start, short enough
that nothing could have replaced the object meanwhile (only a run of the same operation writes that key, and it
writes the same bytes)."""
HANDOFF_ENTRIES = 8
"""At most this many outputs are kept (8 MiB), the oldest dropped first: an executor runs one chain at a time."""


class _Written(NamedTuple):
    body: bytes
    content_type: str
    at: float


class _ResponseError(Exception):
    """A non-2xx answer to a request of the lean client: its status and S3 error code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


_FAILURES = (
    ClientError,
    _ResponseError,
    ParamValidationError,
    BotoCoreError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)
"""What a request to S3 can fail with; `_permanent` tells which of them retrying cannot help."""


def _permanent(exc: BaseException, what: str) -> Exception | None:
    """The error to raise at once for a failure of a request about `what` that retrying cannot help; None for one
    that may pass (a 5xx, throttling, a timeout, a broken connection)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    elif isinstance(exc, _ResponseError):
        code, status = exc.code, exc.status
    elif isinstance(exc, ParamValidationError):  # refused before sending (e.g. a bad bucket name)
        return ValueError(str(exc))
    else:
        return None
    if code in _MISSING_CODES:
        return ObjectMissingError(what)
    if status < 500 and status != 429 and code not in _TRANSIENT_CODES:
        return StorageRefusedError(f"S3 refused {what}: {code or status}")
    return None


def _lean_path(bucket: str, key: str) -> bool:
    """Whether the lean client can address this object. Its URLs go through yarl, which resolves `.` and `..`
    segments (`a/../b` becomes `b`); in an S3 key (or a bucket name) they are plain names, so such objects go through
    botocore."""
    return not any(segment in (".", "..") for segment in f"{bucket}/{key}".split("/"))


def _metadata_headers(metadata: dict[str, str]) -> dict[str, str]:
    """User metadata as signed `x-amz-meta-*` headers. S3 takes ASCII only (botocore refuses the rest before
    sending), and signs values trimmed, with inner runs of spaces as one: sent otherwise, a value would fail as a
    signature mismatch."""
    for name, value in metadata.items():
        if not (name.isascii() and value.isascii()):
            msg = f"S3 metadata must be ASCII: {name!r}: {value!r}"
            raise ValueError(msg)
    return {f"x-amz-meta-{name}": " ".join(value.split()) for name, value in metadata.items()}


class Storage:
    """`client` (botocore's) does everything; with `objects` (the lean client of `libs.common.s3.s3_objects`), the
    single-request PUTs and GETs, the ones every operation makes, go through that one instead, at a third of the
    CPU. Both are retried and their errors classified alike."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        attempts: int,
        backoff_seconds: float,
        presign_expiry: int,
        objects: ObjectClient | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.presign_expiry = presign_expiry
        self.objects = objects
        self._written: OrderedDict[str, _Written] = OrderedDict()

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _lean(self, bucket: str, key: str) -> bool:
        return self.objects is not None and _lean_path(bucket, key)

    async def get(self, url: str, max_bytes: int) -> tuple[bytes, str | None]:
        bucket, key = parse_s3_url(url)
        if self._lean(bucket, key):
            return await self._retrying_lean(lambda: self._get_lean(url, bucket, key, max_bytes), url)

        async def call() -> tuple[bytes, str | None]:
            response = await self.client.get_object(Bucket=bucket, Key=key)
            if response["ContentLength"] > max_bytes:
                raise _too_large(url, response["ContentLength"], max_bytes)
            async with response["Body"] as body:
                return await body.read(), response.get("ContentType")

        return await self._retrying(call, url)

    async def _get_lean(self, url: str, bucket: str, key: str, max_bytes: int) -> tuple[bytes, str | None]:
        async with await self._request("GET", bucket, key) as response:
            if (response.content_length or 0) > max_bytes:
                raise _too_large(url, response.content_length, max_bytes)
            body = bytearray()
            # Bounded as it is read, too: a chunked answer has no Content-Length to check first.
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(url, None, max_bytes)
            return bytes(body), response.headers.get("Content-Type")

    async def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        sha256: str | None = None,
    ) -> aiohttp.ClientResponse:
        """A signed request of the lean client; raises _ResponseError on an answer that is not a 2xx."""
        if self.objects is None:
            raise RuntimeError("no lean client")
        validate_bucket_name({"Bucket": bucket})  # as botocore checks it: a clear error, not a request
        if body is not None and sha256 is None:
            sha256 = hashlib.sha256(body).hexdigest()
        response = await self.objects.request(
            method,
            f"{bucket}/{key}",
            headers=headers,
            data=body,
            # Signed, so S3 checks the body arrived whole, as it does for botocore's PUTs.
            content_sha256=sha256,
            # A redirect (another region) would be followed with this request's signature: an error instead.
            allow_redirects=False,
            expect100=body is not None and len(body) >= EXPECT_CONTINUE_MIN_BYTES,
        )
        if response.status >= 300:
            async with response:
                try:  # the start of the body is enough for its <Code>; a proxy's error page may be large
                    found = _ERROR_CODE.search(await response.content.read(ERROR_BODY_BYTES))
                except aiohttp.ClientError:  # cut off: the status still says what happened
                    found = None
            raise _ResponseError(response.status, found.group(1).decode() if found else str(response.status))
        return response

    async def _retrying_lean(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`_retrying` for a call of the lean client, each attempt of which is `_lean_attempt`."""
        return await self._retrying(lambda: self._lean_attempt(call), what)

    async def _lean_attempt(self, call: Callable[[], Awaitable[T]]) -> T:
        """One attempt through the lean client: up to LEAN_REQUESTS_PER_ATTEMPT requests, a transient failure
        tried again after a short pause, as botocore's client does within each of its calls."""
        for request in range(1, LEAN_REQUESTS_PER_ATTEMPT + 1):
            try:
                return await call()
            except _FAILURES as exc:
                if request == LEAN_REQUESTS_PER_ATTEMPT or _permanent(exc, "") is not None:
                    raise
                delay = backoff_delay(request, self.backoff_seconds)
            await asyncio.sleep(delay)
        raise AssertionError  # unreachable: the loop returns or raises

    @asynccontextmanager
    async def open(self, url: str, chunk_size: int) -> AsyncIterator[tuple[AsyncIterator[bytes], str | None]]:
        """The object's bytes as chunks, read as they are consumed, and its content type."""
        if (written := self._recall(url)) is not None:
            yield _slices(written.body, chunk_size), written.content_type
            return
        bucket, key = parse_s3_url(url)
        if self._lean(bucket, key):
            async with self._open_lean(url, bucket, key, chunk_size) as opened:
                yield opened
            return
        response = await self._retrying(lambda: self.client.get_object(Bucket=bucket, Key=key), url)
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            except (BotoCoreError, OSError, TimeoutError) as exc:
                raise StorageUnavailableError(f"reading {url} failed midway: {exc}") from exc

        try:
            yield chunks(), response.get("ContentType")
        finally:
            body.close()

    @asynccontextmanager
    async def _open_lean(
        self, url: str, bucket: str, key: str, chunk_size: int
    ) -> AsyncIterator[tuple[AsyncIterator[bytes], str | None]]:
        response = await self._retrying_lean(lambda: self._request("GET", bucket, key), url)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_chunked(chunk_size):
                    yield chunk
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise StorageUnavailableError(f"reading {url} failed midway: {exc}") from exc

        try:
            yield chunks(), response.headers.get("Content-Type")
        finally:
            response.release()

    def _remember(self, url: str, body: bytes, content_type: str) -> None:
        """Keep an output just written whole, for `open` to read from memory (see HANDOFF_MAX_BYTES)."""
        if len(body) > HANDOFF_MAX_BYTES:
            return
        self._written[url] = _Written(body, content_type, time.monotonic())
        self._written.move_to_end(url)
        while len(self._written) > HANDOFF_ENTRIES:
            self._written.popitem(last=False)

    def _forget(self, key: str) -> None:
        """The object at `key` is being written: what memory kept of it is no longer its content."""
        self._written.pop(self.url(key), None)

    def _recall(self, url: str) -> _Written | None:
        written = self._written.get(url)
        if written is not None and time.monotonic() - written.at > HANDOFF_SECONDS:
            del self._written[url]
            return None
        return written

    def upload(self, key: str, content_type: str, metadata: dict[str, str] | None = None) -> "Upload":
        return Upload(self, key, content_type, metadata or {})

    async def get_json_if_exists(self, key: str) -> bytes | None:
        try:
            raw, _ = await self.get(self.url(key), max_bytes=16 * 1024 * 1024)
        except ObjectMissingError:
            return None
        return raw

    async def put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        metadata: dict[str, str] | None = None,
        *,
        sha256: str | None = None,
    ) -> str:
        """Store `body` at `key` in one request (`sha256`: its digest, when the caller has it already)."""
        self._forget(key)
        if self._lean(self.bucket, key):
            headers = {"Content-Type": content_type, **_metadata_headers(metadata or {})}

            async def call() -> None:
                async with await self._request("PUT", self.bucket, key, body, headers, sha256) as response:
                    await response.read()

            await self._retrying_lean(call, key)
            return self.url(key)
        await self._retrying(
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata or {}
            ),
            key,
        )
        return self.url(key)

    async def check(self) -> None:
        """Raises when the bucket cannot be reached (health checks), through either client."""
        await self.client.head_bucket(Bucket=self.bucket)
        if self.objects is not None:
            async with await self.objects.head(self.bucket, allow_redirects=False) as response:
                if response.status >= 300:
                    raise _ResponseError(response.status, str(response.status))

    async def presign(self, key: str) -> str:
        return await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_expiry
        )

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except _FAILURES as exc:
                permanent = _permanent(exc, what)
                if permanent is not None:
                    try:
                        raise permanent from None
                    finally:  # its traceback holds this frame: the frame must not hold it back (a cycle)
                        permanent = None
                if attempt == self.attempts:
                    msg = f"S3 unavailable after {attempt} attempts ({type(exc).__name__}: {exc})"
                    raise StorageUnavailableError(msg) from exc
                delay = backoff_delay(attempt, self.backoff_seconds)
                log.warning("storage.retry", target=what, attempt=attempt, delay=round(delay, 3), error=str(exc)[:200])
            # Waited out of the except block: the failure (its traceback, and the frames it holds, a PUT's body
            # among them) is released first, not kept alive by a cycle through a local.
            await asyncio.sleep(delay)
        raise AssertionError  # unreachable: the loop returns or raises


def _too_large(url: str, size: int | None, max_bytes: int) -> ValueError:
    if size is None:
        return ValueError(f"{url} is over the limit of {max_bytes} bytes")
    return ValueError(f"{url} is {size} bytes; the limit is {max_bytes}")


async def _slices(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


PART_SIZE = 8 * 1024 * 1024
"""Multipart part size: above S3's 5 MiB minimum, and the most an upload holds in memory."""


class Upload:
    """Writes an object of any size in bounded memory: one PUT when it is small, a multipart upload otherwise.

    Use as `async with storage.upload(...) as upload: await upload.write(...)`; leaving the block with an
    exception aborts the multipart upload, so no partial object is ever visible.
    """

    def __init__(self, storage: Storage, key: str, content_type: str, metadata: dict[str, str]) -> None:
        self.storage = storage
        self.key = key
        self.content_type = content_type
        self.metadata = metadata
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    @property
    def url(self) -> str:
        return self.storage.url(self.key)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    async def __aenter__(self) -> "Upload":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                await self._finish()
            except BaseException:
                await self._abort()  # a failed last part or completion must not leave the upload pending either
                raise
        else:
            await self._abort()

    async def _abort(self) -> None:
        if self._upload_id is None:
            return
        try:
            await self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id
            )
        except (ClientError, BotoCoreError, OSError) as exc:  # the error that made us abort is the one to report
            log.warning("storage.abort_failed", target=self.key, error=str(exc)[:200])

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        self._sha256.update(data)
        self._buffer += data
        if len(self._buffer) >= PART_SIZE:
            await self._upload_part()

    async def _upload_part(self) -> None:
        client, bucket = self.storage.client, self.storage.bucket
        if self._upload_id is None:
            self.storage._forget(self.key)
            created = await self.storage._retrying(
                lambda: client.create_multipart_upload(
                    Bucket=bucket, Key=self.key, ContentType=self.content_type, Metadata=self.metadata
                ),
                self.key,
            )
            self._upload_id = created["UploadId"]
        body, number, upload_id = bytes(self._buffer), len(self._parts) + 1, self._upload_id
        part = await self.storage._retrying(
            lambda: client.upload_part(Bucket=bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body),
            self.key,
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})
        self._buffer.clear()

    async def _finish(self) -> None:
        if self._upload_id is None:
            body = bytes(self._buffer)
            url = await self.storage.put(self.key, body, self.content_type, self.metadata, sha256=self.sha256)
            self.storage._remember(url, body, self.content_type)
            return
        if self._buffer:
            await self._upload_part()
        upload_id, parts = self._upload_id, self._parts
        await self.storage._retrying(
            lambda: self.storage.client.complete_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
            self.key,
        )
