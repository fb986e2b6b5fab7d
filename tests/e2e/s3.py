"""Direct S3 access for assertions on artifacts."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from types_aiobotocore_s3 import S3Client

from libs.common.s3 import s3_client
from libs.common.settings import S3Settings


@asynccontextmanager
async def s3(endpoint: str, bucket: str) -> AsyncIterator[S3Client]:
    async with s3_client(S3Settings(s3_endpoint_url=endpoint, s3_bucket=bucket)) as client:
        yield client


async def read_json(client: S3Client, url: str) -> dict[str, Any]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    response = await client.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        document: dict[str, Any] = orjson.loads(await body.read())
    return document


async def etag(client: S3Client, url: str) -> str:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    head = await client.head_object(Bucket=bucket, Key=key)
    return head["ETag"] + head["LastModified"].isoformat()
