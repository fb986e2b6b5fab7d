"""Which Last-Event-ID headers are a position in an object's events: ASCII digits up to the highest id there can be;
anything else is no position, never an error."""

import pytest

from libs.common.db.models import EVENT_SEQ_MAX as SEQ_MAX
from services.progress.routes import _parse_last_event_id


@pytest.mark.parametrize(("value", "position"), [("0", 0), ("3", 3), (" 7 ", 7), (str(SEQ_MAX), SEQ_MAX)])
def test_an_event_id_is_a_position(value: str, position: int) -> None:
    assert _parse_last_event_id(value) == position


@pytest.mark.parametrize(
    "value",
    [None, "", "-1", "1e3", "abc", "\u00b2", "\u0663", str(SEQ_MAX + 1), "9" * 5000],
    ids=[
        "absent",
        "empty",
        "negative",
        "exponent",
        "letters",
        "superscript two",
        "arabic-indic three",
        "beyond",
        "huge",
    ],
)
def test_anything_else_is_no_position(value: str | None) -> None:
    assert _parse_last_event_id(value) is None
