"""The stream's response and its pre-encoded events are sse-starlette's, byte for byte, minus per-send overhead."""

from sse_starlette import EventSourceResponse

from services.progress.hub import Update
from services.progress.routes import EventStream


def test_an_update_carries_the_event_sse_starlette_would_send() -> None:
    update = Update.of(7, '{"state":"processing"}', terminal=False)
    assert update.event == b'id: 7\r\ndata: {"state":"processing"}\r\n\r\n'


def test_the_send_it_overrides_is_still_sse_starlette_s() -> None:
    # Renamed upstream, the override would silently stop applying (and the cancel scope come back).
    assert "_send_with_timeout" in vars(EventSourceResponse)
    assert "_send_with_timeout" in vars(EventStream)
