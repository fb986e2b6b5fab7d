"""Each submission limit, at its bound and just past it."""

from typing import Any

import orjson
import pytest

from services.gateway.schemas import ProcessRequest
from services.gateway.service import PayloadTooLargeError, SubmissionLimits, TooManyOperationsError

LIMITS = SubmissionLimits(payload_bytes=1024, operations=2, options_bytes=300, metadata_bytes=300)


def request(**fields: Any) -> ProcessRequest:
    return ProcessRequest.model_validate({"identifier": "limits-1", "operations": ["validate"], **fields})


def test_the_payload_at_the_limit_passes_and_one_byte_more_is_413() -> None:
    LIMITS.check(request(), payload_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match="1025 bytes; the limit is 1024"):
        LIMITS.check(request(), payload_bytes=1025)


def test_operations_at_the_limit_pass_and_one_more_is_422() -> None:
    LIMITS.check(request(operations=["validate", "analyze"]), 0)
    with pytest.raises(TooManyOperationsError, match="3 operations; an object may have at most 2"):
        LIMITS.check(request(operations=["validate", "transform", "analyze"]), 0)
    assert TooManyOperationsError.http_status == 422


def sized(size: int, wrap: Any) -> Any:
    """`wrap(text)`, with `text` long enough for the result to be exactly `size` bytes as compact JSON."""
    return wrap("x" * (size - len(orjson.dumps(wrap("")))))


def test_metadata_at_the_limit_passes_and_one_byte_more_is_413() -> None:
    def metadata(text: str) -> dict[str, Any]:
        return {"note": text}

    LIMITS.check(request(metadata=sized(300, metadata)), 0)
    with pytest.raises(PayloadTooLargeError, match="`metadata` is 301 bytes as JSON; the limit is 300"):
        LIMITS.check(request(metadata=sized(301, metadata)), 0)


def test_options_at_the_limit_pass_and_one_byte_more_is_413() -> None:
    def options(text: str) -> dict[str, Any]:
        return {"validate": {"schema": {"description": text}}}

    LIMITS.check(request(options=sized(300, options)), 0)
    with pytest.raises(PayloadTooLargeError, match="`options` is 301 bytes as JSON; the limit is 300"):
        LIMITS.check(request(options=sized(301, options)), 0)
