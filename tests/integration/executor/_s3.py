"""Commands for OperationRunner, and reading back what it stored in S3."""

from typing import Any
from uuid import uuid4

import orjson
from botocore.exceptions import ClientError
from types_aiobotocore_s3 import S3Client

from libs.common.events import OperationCompletedV1, OperationFailedV1, RunOperationV1
from libs.common.s3 import parse_s3_url


def identifier() -> str:
    return f"it-exec-{uuid4().hex}"


def command(operation: str, *, index: int = 0, total: int = 1, **fields: Any) -> RunOperationV1:
    values: dict[str, Any] = {"object_id": uuid4(), "task_id": uuid4(), "identifier": identifier()}
    return RunOperationV1(operation=operation, index=index, total=total, **(values | fields))


def following(previous: RunOperationV1, done: OperationCompletedV1, operation: str, **fields: Any) -> RunOperationV1:
    """A command for the next operation of the same object, on the data the previous one left (as the executor goes
    on with a chain: `RunOperationV1.following`), with any operation."""
    data: dict[str, Any] = {"data_url": previous.data_url, "data_format": previous.data_format}
    if done.output_url is not None:
        data = {"data_url": done.output_url, "data_format": done.output_format}
    return command(
        operation,
        index=previous.index + 1,
        total=previous.total,
        object_id=previous.object_id,
        task_id=previous.task_id,
        identifier=previous.identifier,
        **(data | fields),
    )


def completed_of(result: OperationCompletedV1 | OperationFailedV1) -> OperationCompletedV1:
    assert isinstance(result, OperationCompletedV1), getattr(result, "error", result)
    return result


def failed_of(result: OperationCompletedV1 | OperationFailedV1) -> OperationFailedV1:
    assert isinstance(result, OperationFailedV1), result
    return result


async def read(s3: S3Client, url: str) -> tuple[bytes, str]:
    bucket, key = parse_s3_url(url)
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        return await body.read(), response["ContentType"]


async def read_json(s3: S3Client, url: str) -> Any:
    raw, _ = await read(s3, url)
    return orjson.loads(raw)


async def exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


async def upload(s3: S3Client, bucket: str, key: str, body: bytes, content_type: str | None = None) -> str:
    if content_type:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    else:
        await s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


async def pending_uploads(s3: S3Client, bucket: str, key: str) -> list[str]:
    """Multipart uploads of `key` begun and neither completed nor aborted."""
    listed = await s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in listed.get("Uploads", []) if u.get("Key") == key]
