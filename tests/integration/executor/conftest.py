from collections.abc import AsyncIterator

import pytest
from aiohttp_s3_client import S3Client as ObjectClient
from botocore.exceptions import ClientError
from types_aiobotocore_s3 import S3Client

from libs.common.s3 import s3_client, s3_objects
from libs.common.settings import S3Settings
from services.executor.service import OperationRunner
from services.executor.storage import Storage

EXECUTOR_ID = "executor-it"
MAX_DOCUMENT_BYTES = 64 * 1024
PRESIGN_EXPIRY = 600


@pytest.fixture(scope="session")
def s3_settings(s3_endpoint: str, bucket: str) -> S3Settings:
    return S3Settings(s3_endpoint_url=s3_endpoint, s3_bucket=bucket)


@pytest.fixture(scope="session")
async def s3(s3_settings: S3Settings) -> AsyncIterator[S3Client]:
    """A client of the test S3 endpoint, with the session's bucket created."""
    async with s3_client(s3_settings) as client:
        try:
            await client.head_bucket(Bucket=s3_settings.s3_bucket)
        except ClientError:
            await client.create_bucket(Bucket=s3_settings.s3_bucket)
        yield client


@pytest.fixture(scope="session")
async def objects(s3_settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async with s3_objects(s3_settings) as client:
        yield client


@pytest.fixture
def storage(s3: S3Client, objects: ObjectClient, bucket: str) -> Storage:
    """As an executor builds it: single-request PUTs and GETs through the lean client."""
    return Storage(s3, bucket, attempts=2, backoff_seconds=0.01, presign_expiry=PRESIGN_EXPIRY, objects=objects)


@pytest.fixture
def runner(storage: Storage) -> OperationRunner:
    return OperationRunner(storage, executor_id=EXECUTOR_ID, max_document_bytes=MAX_DOCUMENT_BYTES)
