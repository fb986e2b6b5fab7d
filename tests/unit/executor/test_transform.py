"""The transform operation's pure parts: key normalisation and option validation. Its steps run against S3 in
tests/integration/executor/test_transform.py, since transform writes its output through storage."""

from typing import Any

import pytest
from pydantic import ValidationError

from libs.common.options import TransformOptions
from services.executor.operations.transform import snake_case


def steps(*values: dict[str, Any]) -> TransformOptions:
    return TransformOptions.model_validate({"steps": list(values)})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("firstName", "first_name"),
        (" First Name ", "first_name"),
        ("order-id", "order_id"),
        ("already_snake", "already_snake"),
        ("v2Value", "v2_value"),
        ("---", "---"),
    ],
)
def test_snake_case_converts_key_styles(name: str, expected: str) -> None:
    assert snake_case(name) == expected


def test_transform_options_refuse_an_invalid_jmespath_expression() -> None:
    with pytest.raises(ValidationError, match="not a valid JMESPath expression"):
        steps({"op": "filter", "expression": "age >"})


def test_transform_options_refuse_an_unknown_step() -> None:
    with pytest.raises(ValidationError):
        steps({"op": "explode", "fields": ["a"]})
