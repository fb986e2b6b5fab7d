"""Reading `objects:events`: only the events of objects followed on this instance are decoded."""

from typing import Any
from uuid import uuid4

import orjson

from libs.common.events.streams import DATA_FIELD
from services.progress.events import EVENTS_PER_READ, FollowedEvents, linger_after
from services.progress.hub import Hub
from tests.unit.progress.test_hub import event


def read(*bodies: bytes | None) -> Any:
    """A batch as FastStream's stream subscriber hands it to a parser."""
    data = [{} if body is None else {DATA_FIELD.encode(): body} for body in bodies]
    return {
        "type": "bstream",
        "channel": b"objects:events",
        "message_ids": [f"1-{n}".encode() for n in range(len(bodies))],
        "data": data,
    }


def test_a_read_yields_the_events_of_followed_objects_only() -> None:
    hub = Hub(queue_size=10)
    followed, other = uuid4(), uuid4()
    first, second = event(followed, 1), event(followed, 2)
    with hub.subscribe(followed):
        batch = FollowedEvents(
            read(
                first.model_dump_json().encode(),
                event(other, 1).model_dump_json().encode(),
                second.model_dump_json().encode(),
            ),
            hub,
        )

    assert batch.events == [first, second]


def test_a_malformed_entry_is_skipped_without_losing_the_rest() -> None:
    hub = Hub(queue_size=10)
    followed = uuid4()
    good = event(followed, 1)
    with hub.subscribe(followed):
        broken = {**good.model_dump(mode="json"), "seq": "not a number"}
        batch = FollowedEvents(
            read(
                b"not json",
                None,
                b'{"no": "object id"}',
                b'{"object_id": 123}',
                orjson.dumps(broken),
                good.model_dump_json().encode(),
            ),
            hub,
        )

    assert batch.events == [good]


def test_a_read_counts_every_entry_it_read_followed_or_not() -> None:
    hub = Hub(queue_size=10)
    batch = FollowedEvents(read(orjson.dumps(event(uuid4(), 1).model_dump(mode="json")), None, b"{}"), hub)
    assert batch.read == 3
    assert batch.events == []


def test_the_reader_lingers_after_a_partial_read_and_not_after_a_full_one() -> None:
    assert linger_after(1, 0.02) == 0.02, "caught up: let the next events gather"
    assert linger_after(EVENTS_PER_READ - 1, 0.02) == 0.02
    assert linger_after(EVENTS_PER_READ, 0.02) == 0.0, "a backlog: read on at once"
    assert linger_after(1, 0.0) == 0.0
