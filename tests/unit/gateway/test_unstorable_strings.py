"""Strings that cannot be stored: a NUL character (PostgreSQL keeps none in text or jsonb) or an unpaired surrogate
(no UTF-8 at all), which the standard library's JSON parser takes. The request bodies refuse them in any string,
keys included, and take everything else: a backslash followed by `u0000`, a surrogate pair, integers beyond 64 bits."""

import json
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from libs.common.events import OperationFailedV1
from services.gateway.schemas import ApiKeyCreate, ProcessRequest


def submission(**fields: Any) -> dict[str, Any]:
    return {"identifier": "object-1", "operations": ["validate"], **fields}


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"payload": {"note": "a\x00b"}}, "payload"),
        ({"payload": [1, [{"deep": ["\x00"]}]]}, "payload"),
        ({"payload": [2**70, "\x00"]}, "payload"),
        ({"metadata": {"k\x00": 1}}, "metadata"),
        ({"source": "s3://bucket/a\x00.json"}, "source"),
        ({"options": {"validate": {"schema": {"title": "\x00"}}}}, "options"),
        ({"payload": {"text": "\ud800"}}, "payload"),
        ({"metadata": {"\udfff": 1}}, "metadata"),
    ],
)
def test_an_unstorable_character_anywhere_is_refused_with_its_field(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ProcessRequest.model_validate(submission(**fields))
    (error,) = refused.value.errors()
    assert error["loc"] == (where,)
    assert "NUL" in error["msg"]
    assert "surrogate" in error["msg"]


@pytest.mark.parametrize(
    "payload",
    [{"text": "a\\u0000b"}, {"big": 2**70, "text": "fine"}, ["\x01", "\u2028", "é", json.loads('"\\ud83d\\ude00"')]],
    ids=str,
)
def test_other_strings_and_numbers_pass(payload: Any) -> None:
    assert ProcessRequest.model_validate(submission(payload=payload)).payload == payload


@pytest.mark.parametrize("name", ["ci\x00", "ci\ud800"])  # pydantic's str refuses the surrogate itself
def test_an_api_key_name_that_cannot_be_stored_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=r"NUL|unicode"):
        ApiKeyCreate.model_validate({"scopes": ["read"], "name": name})


def test_an_executor_s_error_quoting_such_characters_is_made_storable() -> None:
    # Built from an exception's text in the executor: with a lone surrogate, it could not even be sent.
    failure = OperationFailedV1(
        object_id=uuid4(), task_id=uuid4(), operation="validate", index=0, executor_id="e", error="bad \x00, \ud800"
    )
    assert failure.error == "bad \ufffd, \ufffd"
    assert "\ufffd" in failure.model_dump_json()
