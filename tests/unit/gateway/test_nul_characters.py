"""PostgreSQL stores no NUL character in text or jsonb: the request bodies refuse one in any string, keys included,
and take everything else, a backslash followed by `u0000` and integers beyond 64 bits among it."""

from typing import Any

import pytest
from pydantic import ValidationError

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
    ],
)
def test_a_nul_character_anywhere_is_refused_with_its_field(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ProcessRequest.model_validate(submission(**fields))
    (error,) = refused.value.errors()
    assert error["loc"] == (where,)
    assert "NUL" in error["msg"]


@pytest.mark.parametrize(
    "payload", [{"text": "a\\u0000b"}, {"big": 2**70, "text": "fine"}, ["\x01", "\u2028", "é"]], ids=str
)
def test_other_strings_and_numbers_pass(payload: Any) -> None:
    assert ProcessRequest.model_validate(submission(payload=payload)).payload == payload


def test_an_api_key_name_with_a_nul_character_is_refused() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        ApiKeyCreate.model_validate({"scopes": ["read"], "name": "ci\x00"})
