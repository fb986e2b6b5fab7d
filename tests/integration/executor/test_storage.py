"""Storage against an S3 endpoint: streamed reads, and uploads of any size that never leave a partial object."""

import asyncio
import contextlib
import gc
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, cast
from uuid import uuid4

import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from types_aiobotocore_s3 import S3Client

from deploy.local.stack import free_port
from libs.common.s3 import EXPECT_CONTINUE_MIN_BYTES, s3_objects
from libs.common.settings import S3Settings
from services.executor import storage as storage_module
from services.executor.storage import (
    LEAN_REQUESTS_PER_ATTEMPT,
    PART_SIZE,
    ObjectMissingError,
    Storage,
    StorageRefusedError,
    StorageUnavailableError,
    _ResponseError,
)
from tests.integration.executor._s3 import exists, pending_uploads, read, upload


def key() -> str:
    return f"it-storage/{uuid4().hex}/object.bin"


def payload(size: int) -> bytes:
    return os.urandom(size)


async def write_then_fail(storage: Storage, name: str, size: int, error: str) -> None:
    async with storage.upload(name, "application/x-ndjson") as upload_:
        await upload_.write(payload(size))
        raise RuntimeError(error)


class FailingClient:
    """The real client, except for the calls named, which fail as S3 would."""

    def __init__(self, client: S3Client, failing: set[str], status: int = 500) -> None:
        self._client = client
        self._failing = failing
        self._status = status

    def __getattr__(self, name: str) -> Any:
        if name in self._failing:

            async def fail(**kwargs: Any) -> None:
                error = {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": self._status}}
                raise ClientError(error, name)  # type: ignore[arg-type]

            return fail
        return getattr(self._client, name)


def failing_storage(storage: Storage, *calls: str) -> Storage:
    client = cast(S3Client, FailingClient(storage.client, set(calls)))
    return Storage(client, storage.bucket, attempts=2, backoff_seconds=0.01, presign_expiry=storage.presign_expiry)


class TestUpload:
    async def test_a_small_object_is_stored_with_one_put(self, storage: Storage, s3: S3Client) -> None:
        name, body = key(), payload(PART_SIZE - 1)
        async with storage.upload(name, "application/x-ndjson", {"object-id": "o-1"}) as upload_:
            for start in range(0, len(body), 1_000_000):
                await upload_.write(body[start : start + 1_000_000])
        head = await s3.head_object(Bucket=storage.bucket, Key=name)
        assert head["ETag"].strip('"') == hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag of one PUT
        assert head["ContentType"] == "application/x-ndjson"
        assert head["Metadata"] == {"object-id": "o-1"}
        assert (await read(s3, upload_.url))[0] == body
        assert (upload_.url, upload_.size, upload_.sha256) == (
            storage.url(name),
            len(body),
            hashlib.sha256(body).hexdigest(),
        )

    async def test_an_empty_object_is_stored(self, storage: Storage, s3: S3Client) -> None:
        name = key()
        async with storage.upload(name, "text/csv") as upload_:
            pass
        assert (await read(s3, upload_.url))[0] == b""
        assert upload_.sha256 == hashlib.sha256(b"").hexdigest()

    async def test_a_large_object_is_stored_in_parts(self, storage: Storage, s3: S3Client) -> None:
        name, body = key(), payload(2 * PART_SIZE + 12_345)
        async with storage.upload(name, "application/json", {"object-id": "o-2"}) as upload_:
            # Uneven writes, one larger than a part: parts are cut wherever the buffer passes PART_SIZE.
            for start, end in [(0, 100), (100, PART_SIZE + 7), (PART_SIZE + 7, len(body))]:
                await upload_.write(body[start:end])
        head = await s3.head_object(Bucket=storage.bucket, Key=name)
        assert head["ETag"].strip('"').endswith("-2")
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"object-id": "o-2"}
        assert head["ContentLength"] == len(body)
        assert (await read(s3, upload_.url))[0] == body
        assert (upload_.size, upload_.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert await pending_uploads(s3, storage.bucket, name) == []

    async def test_parts_are_cut_at_the_part_size_when_written_in_small_pieces(
        self, storage: Storage, s3: S3Client
    ) -> None:
        name, body = key(), payload(2 * PART_SIZE + 1)
        async with storage.upload(name, "application/octet-stream") as upload_:
            for start in range(0, len(body), 1024 * 1024):
                await upload_.write(body[start : start + 1024 * 1024])
        head = await s3.head_object(Bucket=storage.bucket, Key=name)
        assert head["ETag"].strip('"').endswith("-3")  # 8 MiB, 8 MiB, 1 byte
        assert (await read(s3, upload_.url))[0] == body

    @pytest.mark.parametrize("written", [100, PART_SIZE + 100])
    async def test_an_error_inside_the_block_leaves_no_object_and_no_pending_upload(
        self, storage: Storage, s3: S3Client, written: int
    ) -> None:
        name = key()
        with pytest.raises(RuntimeError, match="operation failed midway"):
            await write_then_fail(storage, name, written, "operation failed midway")
        assert not await exists(s3, storage.bucket, name)
        assert await pending_uploads(s3, storage.bucket, name) == []

    async def test_a_failed_completion_aborts_the_upload(self, storage: Storage, s3: S3Client) -> None:
        name = key()
        broken = failing_storage(storage, "complete_multipart_upload")
        with pytest.raises(StorageUnavailableError, match="S3 unavailable after 2 attempts"):
            async with broken.upload(name, "application/x-ndjson") as upload_:
                await upload_.write(payload(PART_SIZE + 100))
        assert not await exists(s3, storage.bucket, name)
        assert await pending_uploads(s3, storage.bucket, name) == []

    async def test_a_failed_abort_does_not_hide_the_error_that_caused_it(self, storage: Storage, s3: S3Client) -> None:
        name = key()
        broken = failing_storage(storage, "abort_multipart_upload")
        with pytest.raises(RuntimeError, match="the real problem"):
            await write_then_fail(broken, name, PART_SIZE, "the real problem")
        for upload_id in await pending_uploads(s3, storage.bucket, name):  # clean up what the broken client left
            await s3.abort_multipart_upload(Bucket=storage.bucket, Key=name, UploadId=upload_id)


class TestOpen:
    async def test_open_yields_the_object_in_chunks_and_its_content_type(self, storage: Storage, s3: S3Client) -> None:
        body = payload(3 * 1024 * 1024 + 5)
        url = await upload(s3, storage.bucket, key(), body, content_type="text/csv")
        async with storage.open(url, chunk_size=1024 * 1024) as (chunks, content_type):
            received = [chunk async for chunk in chunks]
        assert content_type == "text/csv"
        assert b"".join(received) == body
        assert len(received) >= 4
        assert max(map(len, received)) <= 1024 * 1024

    async def test_open_raises_object_missing_for_an_absent_key(self, storage: Storage) -> None:
        with pytest.raises(ObjectMissingError):
            async with storage.open(storage.url(key()), chunk_size=1024):
                pass

    async def test_open_raises_storage_unavailable_after_every_attempt_fails(self, storage: Storage) -> None:
        broken = failing_storage(storage, "get_object")
        with pytest.raises(StorageUnavailableError, match="after 2 attempts"):
            async with broken.open(storage.url(key()), chunk_size=1024):
                pass


class TestStorage:
    async def test_put_stores_the_body_and_returns_its_url(self, storage: Storage, s3: S3Client) -> None:
        name = key()
        url = await storage.put(name, b'{"a": 1}', "application/json", {"object-id": "o-3"})
        assert url == f"s3://{storage.bucket}/{name}"
        assert await read(s3, url) == (b'{"a": 1}', "application/json")

    async def test_a_refused_request_is_not_retried(self, storage: Storage) -> None:
        refused = Storage(
            cast(S3Client, FailingClient(storage.client, {"put_object"}, status=403)),
            storage.bucket,
            attempts=5,
            backoff_seconds=10,  # a retry would show as a 10 s wait
            presign_expiry=storage.presign_expiry,
        )
        with pytest.raises(StorageRefusedError, match="S3 refused"):
            await refused.put(key(), b"x", "text/plain")

    async def test_check_passes_when_the_bucket_is_reachable(self, storage: Storage) -> None:
        await storage.check()

    async def test_presign_gives_a_url_for_the_key(self, storage: Storage) -> None:
        name = key()
        url = await storage.presign(name)
        assert name in url
        assert "Expires=" in url or "X-Amz-Expires=" in url


class ErrorEndpoint:
    """An HTTP endpoint that answers every request as S3 answers an error (status and XML `<Code>`; no body when
    `code` is empty), counting them: the answers a lean client must classify, which the S3 server used here cannot
    be made to give."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code, self.requests = status, code, 0

    async def handle(self, _: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not self.code:
            return web.Response(status=self.status)
        body = f"<?xml version='1.0'?><Error><Code>{self.code}</Code><Message>no</Message></Error>"
        return web.Response(status=self.status, text=body, content_type="application/xml")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


class RecordingEndpoint(ErrorEndpoint):
    """Answers every request 200, in chunks with no Content-Length, and keeps each request's Expect header."""

    def __init__(self, body: bytes = b"") -> None:
        super().__init__(200, "")
        self.body = body
        self.expect: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.expect.append(request.headers.get("Expect"))
        await request.read()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(self.body)
        await response.write_eof()
        return response


class RedirectingEndpoint(ErrorEndpoint):
    """Answers every request 301 to itself, as S3 answers for a bucket of another region."""

    def __init__(self) -> None:
        super().__init__(301, "PermanentRedirect")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = "<Error><Code>PermanentRedirect</Code></Error>"
        return web.Response(status=301, text=body, headers={"Location": str(request.url)})


class TruncatingEndpoint(ErrorEndpoint):
    """Answers 200 with a Content-Length of 1000, sends 10 bytes of it and drops the connection."""

    def __init__(self) -> None:
        super().__init__(200, "")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response


class SignatureCheckingEndpoint(ErrorEndpoint):
    """Accepts a request only when its SigV4 signature is the one botocore computes for it, payload hash included
    (403 SignatureDoesNotMatch otherwise): the S3 server of the tests does not check signatures, real ones do."""

    def __init__(self) -> None:
        super().__init__(200, "")
        self.checked: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        authorization = request.headers["Authorization"]
        signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
        headers = {name: request.headers[name] for name in signed if name != "host"}
        url = f"http://{request.headers['Host']}{request.raw_path}"
        expected = AWSRequest(method=request.method, url=url, data=body or None, headers=headers)
        expected.context["timestamp"] = request.headers["x-amz-date"]
        settings = S3Settings()
        credentials = Credentials(
            settings.aws_access_key_id.get_secret_value(), settings.aws_secret_access_key.get_secret_value()
        )
        auth = S3SigV4Auth(credentials, "s3", settings.s3_region)
        auth._modify_request_before_signing(expected)  # type: ignore[attr-defined]  # Host, payload hash, date
        signature = auth.signature(auth.string_to_sign(expected, auth.canonical_request(expected)), expected)
        if authorization.split("Signature=")[1] != signature:
            return web.Response(status=403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>")
        self.checked.append(f"{request.method} {request.raw_path}")
        return web.Response(body=b"ok" if request.method == "GET" else b"", content_type="text/plain")


@contextlib.asynccontextmanager
async def lean_storage(
    storage: Storage, endpoint: str, attempts: int = 2, connections: int = 10
) -> AsyncIterator[Storage]:
    settings = S3Settings(s3_endpoint_url=endpoint, s3_bucket=storage.bucket)
    async with s3_objects(settings, connections) as objects:
        yield Storage(storage.client, storage.bucket, attempts, 0.01, storage.presign_expiry, objects=objects)


class TestLeanClient:
    """The single-request PUTs and GETs an executor makes through `s3_objects` (the `storage` fixture's)."""

    async def test_put_stores_content_type_and_metadata(self, storage: Storage, s3: S3Client) -> None:
        assert storage.objects is not None
        name = key()
        await storage.put(name, b"[1, 2]", "application/json", {"object-id": "o-9"})
        head = await s3.head_object(Bucket=storage.bucket, Key=name)
        assert (head["ContentType"], head["Metadata"], head["ContentLength"]) == (
            "application/json",
            {"object-id": "o-9"},
            6,
        )

    async def test_a_key_that_needs_escaping_is_read_back(self, storage: Storage, s3: S3Client) -> None:
        name = f"it-storage/{uuid4().hex}/a b+c~d%e=f.csv"  # a user's data_url may name any key
        url = await upload(s3, storage.bucket, name, b"id\n1\n", content_type="text/csv")
        assert await storage.get(url, max_bytes=100) == (b"id\n1\n", "text/csv")
        async with storage.open(url, chunk_size=2) as (chunks, content_type):
            assert (b"".join([c async for c in chunks]), content_type) == (b"id\n1\n", "text/csv")
        await storage.put(name, b"id\n2\n", "text/csv")
        assert await read(s3, url) == (b"id\n2\n", "text/csv")

    async def test_get_refuses_an_object_above_the_limit(self, storage: Storage, s3: S3Client) -> None:
        url = await upload(s3, storage.bucket, key(), b"x" * 11)
        with pytest.raises(ValueError, match="is 11 bytes; the limit is 10"):
            await storage.get(url, max_bytes=10)

    async def test_an_absent_key_or_bucket_is_object_missing(self, storage: Storage) -> None:
        with pytest.raises(ObjectMissingError):
            await storage.get(storage.url(key()), max_bytes=10)
        with pytest.raises(ObjectMissingError):
            await storage.get(f"s3://absent-{uuid4().hex[:12]}/{key()}", max_bytes=10)
        assert await storage.get_json_if_exists(key()) is None

    async def test_a_refused_request_is_not_retried(self, storage: Storage) -> None:
        endpoint = ErrorEndpoint(403, "AccessDenied")
        async with endpoint.serving() as url, lean_storage(storage, url, attempts=5) as refused:
            with pytest.raises(StorageRefusedError, match=r"S3 refused .*: AccessDenied"):
                await refused.put(key(), b"x", "text/plain")
        assert endpoint.requests == 1

    @pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")])
    async def test_a_transient_error_is_retried_then_unavailable(
        self, storage: Storage, status: int, code: str
    ) -> None:
        endpoint = ErrorEndpoint(status, code)
        async with endpoint.serving() as url, lean_storage(storage, url, attempts=3) as failing:
            with pytest.raises(StorageUnavailableError, match="after 3 attempts"):
                async with failing.open(storage.url(key()), chunk_size=1024):
                    pass
        assert endpoint.requests == 3 * LEAN_REQUESTS_PER_ATTEMPT  # as botocore's client retries within a call

    async def test_a_404_without_a_body_is_object_missing(self, storage: Storage) -> None:
        endpoint = ErrorEndpoint(404, "")
        async with endpoint.serving() as url, lean_storage(storage, url, attempts=3) as lean:
            with pytest.raises(ObjectMissingError):
                await lean.get(storage.url(key()), max_bytes=10)
        assert endpoint.requests == 1

    async def test_error_answers_give_their_connections_back(self, storage: Storage) -> None:
        endpoint = ErrorEndpoint(403, "AccessDenied")
        async with endpoint.serving() as url, lean_storage(storage, url, connections=1) as refused:
            for _ in range(5):  # one connection: a response not given back would hang the next request
                with pytest.raises(StorageRefusedError):
                    await asyncio.wait_for(refused.get(storage.url(key()), max_bytes=10), 5)
                with pytest.raises(StorageRefusedError):
                    await asyncio.wait_for(refused.put(key(), b"x", "text/plain"), 5)
            with pytest.raises(_ResponseError):
                await refused.check()  # the lean client is probed too

    async def test_a_get_over_the_limit_is_refused_as_it_is_read(self, storage: Storage) -> None:
        endpoint = RecordingEndpoint(b"y" * 100)  # chunked: no Content-Length to check first
        async with endpoint.serving() as url, lean_storage(storage, url, connections=1) as lean:
            for _ in range(3):  # one connection: the answer left unread must give it back
                with pytest.raises(ValueError, match="is over the limit of 10 bytes"):
                    await asyncio.wait_for(lean.get(storage.url(key()), max_bytes=10), 5)
            assert await asyncio.wait_for(lean.get(storage.url(key()), max_bytes=100), 5) == (
                b"y" * 100,
                "application/octet-stream",
            )

    async def test_a_redirect_is_refused_not_followed(self, storage: Storage) -> None:
        endpoint = RedirectingEndpoint()
        async with endpoint.serving() as url, lean_storage(storage, url, attempts=3) as lean:
            with pytest.raises(StorageRefusedError, match="PermanentRedirect"):
                await lean.get(storage.url(key()), max_bytes=10)
        assert endpoint.requests == 1

    async def test_only_a_large_put_waits_for_100_continue(self, storage: Storage) -> None:
        endpoint = RecordingEndpoint()
        async with endpoint.serving() as url, lean_storage(storage, url) as lean:
            await lean.put(key(), b"x" * EXPECT_CONTINUE_MIN_BYTES, "application/octet-stream")
            await lean.put(key(), b"x" * (EXPECT_CONTINUE_MIN_BYTES - 1), "application/octet-stream")
        assert endpoint.expect == ["100-continue", None]

    async def test_a_read_cut_midway_is_unavailable(self, storage: Storage) -> None:
        async with (
            TruncatingEndpoint().serving() as url,
            lean_storage(storage, url) as lean,
            lean.open(storage.url(key()), chunk_size=4) as (chunks, _),
        ):
            with pytest.raises(StorageUnavailableError, match="failed midway"):
                _ = [chunk async for chunk in chunks]

    async def test_a_key_with_dot_segments_is_left_to_botocore(self, storage: Storage, s3: S3Client) -> None:
        name = f"it-storage/{uuid4().hex}/x/../y.csv"  # through a URL, `x/..` would vanish: a different key
        await storage.put(name, b"id\n1\n", "text/csv")
        assert await read(s3, storage.url(name)) == (b"id\n1\n", "text/csv")
        assert await storage.get(storage.url(name), max_bytes=100) == (b"id\n1\n", "text/csv")
        assert not await exists(s3, storage.bucket, name.replace("x/../", ""))

    async def test_requests_are_signed_as_botocore_signs_them(self, storage: Storage) -> None:
        endpoint = SignatureCheckingEndpoint()
        name = "it-storage/a b+c~d%e=f/ü.csv"
        async with endpoint.serving() as url, lean_storage(storage, url) as lean:
            await lean.put(name, b"id\n1\n", "text/csv", {"object-id": " o-1 ", "note": "two  spaces"})
            assert await lean.get(lean.url(name), max_bytes=10) == (b"ok", "text/plain")
            async with lean.upload(name, "text/csv") as output:  # signed with the digest the upload computed
                await output.write(b"id\n2\n")
            await lean.check()
        path = f"/{storage.bucket}/it-storage/a%20b%2Bc~d%25e%3Df/%C3%BC.csv"
        assert endpoint.checked == [f"PUT {path}", f"GET {path}", f"PUT {path}", f"HEAD /{storage.bucket}"]

    async def test_a_refused_put_lets_go_of_its_body_at_once(self, storage: Storage) -> None:
        body = b"x" * 1024
        references = sys.getrefcount(body)
        gc.disable()  # only a reference cycle could still hold it, and a collection would hide that
        try:
            async with ErrorEndpoint(403, "AccessDenied").serving() as url, lean_storage(storage, url) as refused:
                with pytest.raises(StorageRefusedError):
                    await refused.put(key(), body, "text/plain")
                assert sys.getrefcount(body) == references
        finally:
            gc.enable()

    async def test_metadata_must_be_ascii(self, storage: Storage) -> None:
        with pytest.raises(ValueError, match="must be ASCII"):
            await storage.put(key(), b"x", "text/plain", {"note": "café"})

    async def test_an_unreachable_endpoint_is_unavailable_after_every_attempt(self, storage: Storage) -> None:
        async with lean_storage(storage, f"http://127.0.0.1:{free_port()}") as unreachable:
            with pytest.raises(StorageUnavailableError, match="after 2 attempts"):
                await unreachable.put(key(), b"x", "text/plain")


class TestHandoff:
    """An output just written whole is read back from memory by the chain's next operation."""

    async def read_all(self, storage: Storage, url: str) -> tuple[bytes, str | None]:
        async with storage.open(url, chunk_size=4) as (chunks, content_type):
            return b"".join([chunk async for chunk in chunks]), content_type

    async def test_a_small_output_is_read_from_memory(self, storage: Storage, s3: S3Client) -> None:
        name = key()
        async with storage.upload(name, "application/x-ndjson") as output:
            await output.write(b'{"a": 1}\n{"a": 2}\n')
        await s3.delete_object(Bucket=storage.bucket, Key=name)  # gone from S3: only memory can answer now
        assert await self.read_all(storage, output.url) == (b'{"a": 1}\n{"a": 2}\n', "application/x-ndjson")

    async def test_an_output_kept_too_long_is_read_from_s3(
        self, storage: Storage, s3: S3Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        name = key()
        async with storage.upload(name, "text/csv") as output:
            await output.write(b"a\n1\n")
        await s3.put_object(Bucket=storage.bucket, Key=name, Body=b"a\n2\n", ContentType="text/csv")
        monkeypatch.setattr(storage_module, "HANDOFF_SECONDS", 0.0)
        assert await self.read_all(storage, output.url) == (b"a\n2\n", "text/csv")

    async def test_an_output_written_again_is_not_read_from_memory(
        self, storage: Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(storage_module, "HANDOFF_MAX_BYTES", 8)
        name = key()
        async with storage.upload(name, "text/plain") as output:
            await output.write(b"small")
        async with storage.upload(name, "text/plain") as output:  # rewritten, too large to be kept
            await output.write(b"larger than eight")
        assert await self.read_all(storage, output.url) == (b"larger than eight", "text/plain")

    async def test_an_output_written_again_in_parts_is_not_read_from_memory(self, storage: Storage) -> None:
        name = key()
        async with storage.upload(name, "text/plain") as output:
            await output.write(b"small")
        large = payload(PART_SIZE + 1)
        async with storage.upload(name, "text/plain") as output:  # a multipart upload this time
            await output.write(large)
        assert await self.read_all(storage, output.url) == (large, "text/plain")

    async def test_only_small_outputs_and_the_latest_few_are_kept(
        self, storage: Storage, s3: S3Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(storage_module, "HANDOFF_MAX_BYTES", 8)
        names = [key() for _ in range(storage_module.HANDOFF_ENTRIES + 2)]
        for name in names:
            async with storage.upload(name, "text/plain") as output:
                await output.write(b"small")
        async with storage.upload(big := key(), "text/plain") as output:
            await output.write(b"larger than eight")
        for name in [*names, big]:
            await s3.put_object(Bucket=storage.bucket, Key=name, Body=b"in s3", ContentType="text/plain")
        read = [(await self.read_all(storage, storage.url(name)))[0] for name in [*names, big]]
        # The two oldest were dropped, and the large one never kept: those three come from S3.
        assert read == [b"in s3"] * 2 + [b"small"] * storage_module.HANDOFF_ENTRIES + [b"in s3"]
